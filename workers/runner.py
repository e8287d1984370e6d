"""Runs one task attempt: QUEUED -> RUNNING -> a final state, with timeout and cancellation.

This is the one catch-all of the worker: whatever the task body raises is recorded on the
task (FAILED with its type and message) instead of escaping into arq.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
import uuid
from dataclasses import dataclass
from typing import Any, TypedDict

import sqlalchemy as sa
from arq import ArqRedis
from pydantic import ValidationError
from pydantic_core import to_jsonable_python
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import journal
from taskrunner.config import Settings
from taskrunner.events import CANCEL_CHANNEL, EventKind
from taskrunner.models import NOW, task_table
from taskrunner.states import TaskStatus
from workers.catalog import TaskType
from workers.context import TaskContext

log = logging.getLogger(__name__)


class WorkerContext(TypedDict):
    """arq's `ctx` as this worker fills it in `on_startup`."""

    redis: ArqRedis  # arq's own pool
    settings: Settings
    engine: AsyncEngine
    worker_id: str
    running: dict[uuid.UUID, asyncio.Task[Any]]  # task id -> its body, for cancellation
    cancel_requests: dict[uuid.UUID, float]  # asked before its body started here -> when


def _status(to: TaskStatus, **data: Any) -> dict[str, Any]:
    return {"status": to.value, **data}


async def execute(ctx: WorkerContext, task_type: TaskType, task_id: str) -> str:
    """The arq job body for every task type; returns a short note for arq's log."""
    engine, redis = ctx["engine"], ctx["redis"]
    tid = uuid.UUID(task_id)
    start = await journal.apply_one(
        engine,
        redis,
        journal.Change(
            tid,
            EventKind.STATUS,
            _status(TaskStatus.RUNNING),
            to=TaskStatus.RUNNING,
            values={
                "started_at": NOW,
                "attempts": task_table.c.attempts + 1,
                "worker_id": ctx["worker_id"],
            },
        ),
    )
    if not start.accepted:  # cancelled, already run, or a duplicate delivery
        return f"skipped: task is {start.found.value if start.found else 'gone'}"
    row = await _load(engine, tid)
    final = await _run_body(ctx, task_type, tid, row)
    await journal.apply_one(engine, redis, final)
    return str(final.to.value if final.to else "")


@dataclass(frozen=True)
class Attempt:
    """What the runner needs of the task row, read once the attempt has started."""

    input: dict[str, Any]
    timeout_seconds: int
    number: int
    cancel_requested: bool


async def _load(engine: AsyncEngine, task_id: uuid.UUID) -> Attempt:
    t = task_table.c
    query = sa.select(t.input, t.timeout_seconds, t.attempts, t.cancel_requested).where(
        t.id == task_id
    )
    async with engine.connect() as conn:
        row = (await conn.execute(query)).one()
    return Attempt(row.input, row.timeout_seconds, row.attempts, row.cancel_requested)


async def _run_body(
    ctx: WorkerContext, task_type: TaskType, task_id: uuid.UUID, attempt: Attempt
) -> journal.Change:
    """Run the task's coroutine and turn how it ended into the final change."""
    settings = ctx["settings"]
    try:
        data = task_type.input_model.model_validate(
            attempt.input, context={"max_runtime_seconds": settings.task_max_runtime_seconds}
        )
    except ValidationError as exc:
        return _failed(task_id, "BAD_INPUT", f"stored input no longer valid: {exc}")
    tctx = TaskContext(task_id, attempt.number, settings, ctx["engine"], ctx["redis"])
    body = asyncio.create_task(task_type.run(tctx, data), name=f"task:{task_id}")
    ctx["running"][task_id] = body
    if ctx["cancel_requests"].pop(task_id, None) is not None or attempt.cancel_requested:
        body.cancel()  # asked while this attempt was starting
    timer = asyncio.timeout(attempt.timeout_seconds)
    try:
        async with timer:
            result = await body
    except TimeoutError:
        if not timer.expired():
            raise_from = traceback.format_exc()
            await _log(ctx, task_id, "error", raise_from)
            return _failed(task_id, "TimeoutError", "the task raised TimeoutError")
        await _log(ctx, task_id, "error", f"task_killed: exceeded {attempt.timeout_seconds}s")
        return _failed(task_id, "TIMEOUT", f"exceeded its timeout of {attempt.timeout_seconds}s")
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            await _hand_back(ctx, task_id)  # the worker is stopping, not the user
            raise
        return _final(task_id, TaskStatus.CANCELLED)
    except Exception as exc:
        await _log(ctx, task_id, "error", traceback.format_exc())
        return _failed(task_id, type(exc).__name__, str(exc) or type(exc).__name__)
    finally:
        ctx["running"].pop(task_id, None)
    try:
        payload = to_jsonable_python(result)
    except Exception as exc:
        return _failed(task_id, "BAD_RESULT", f"result is not JSON-serializable: {exc}")
    return _final(task_id, TaskStatus.SUCCEEDED, result=payload, progress=1.0)


def _final(task_id: uuid.UUID, to: TaskStatus, **values: Any) -> journal.Change:
    data = _status(to, result=values.get("result"))
    return journal.Change(
        task_id, EventKind.STATUS, data, to=to, values={"finished_at": NOW, **values}
    )


def _failed(task_id: uuid.UUID, code: str, message: str) -> journal.Change:
    error = {"code": code, "message": message}
    return journal.Change(
        task_id,
        EventKind.STATUS,
        _status(TaskStatus.FAILED, error=error),
        to=TaskStatus.FAILED,
        values={"finished_at": NOW, "error_code": code, "error_message": message},
    )


async def _log(ctx: WorkerContext, task_id: uuid.UUID, level: str, line: str) -> None:
    change = journal.Change(task_id, EventKind.LOG, {"level": level, "line": line})
    await journal.apply_one(ctx["engine"], ctx["redis"], change)


async def _hand_back(ctx: WorkerContext, task_id: uuid.UUID) -> None:
    """Put a task this stopping worker was running back to QUEUED for another worker."""
    change = journal.Change(
        task_id,
        EventKind.STATUS,
        _status(TaskStatus.QUEUED),
        to=TaskStatus.QUEUED,
        values={"worker_id": None},
    )
    try:
        await asyncio.shield(journal.apply_one(ctx["engine"], ctx["redis"], change))
    except Exception:
        log.exception("could not hand task %s back; the reconciler will", task_id)


CANCEL_MEMORY_SECONDS = 60.0


def cancel_running(ctx: WorkerContext, task_id: uuid.UUID) -> bool:
    """Cancel the body of a task this worker runs. When it does not run it (yet), remember
    the request for a while: the body may be about to start here."""
    body = ctx["running"].get(task_id)
    if body is None or body.done():
        requests = ctx["cancel_requests"]
        now = time.monotonic()
        for stale in [k for k, at in requests.items() if now - at > CANCEL_MEMORY_SECONDS]:
            del requests[stale]
        requests[task_id] = now
        return False
    body.cancel()
    return True


async def watch_cancellations(ctx: WorkerContext, redis: Redis) -> None:
    """Cancel bodies when asked on the cancel channel, and, in case a message was lost,
    whenever the table says a running task here has `cancel_requested`."""
    pubsub = redis.pubsub()
    await pubsub.subscribe(CANCEL_CHANNEL)
    every = ctx["settings"].stream_quiet_seconds
    next_sweep = time.monotonic() + every
    try:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=every)
            if message is not None and message["type"] == "message":
                raw = message["data"]
                text = raw.decode() if isinstance(raw, bytes) else str(raw)
                cancel_running(ctx, uuid.UUID(text))
            if time.monotonic() >= next_sweep:
                await _sweep(ctx)
                next_sweep = time.monotonic() + every
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


async def _sweep(ctx: WorkerContext) -> None:
    running = [tid for tid, body in ctx["running"].items() if not body.done()]
    if not running:
        return
    t = task_table.c
    async with ctx["engine"].connect() as conn:
        flagged = await conn.scalars(
            sa.select(t.id).where(t.id.in_(running), t.cancel_requested.is_(True))
        )
        ids = list(flagged)
    for tid in ids:
        cancel_running(ctx, tid)
