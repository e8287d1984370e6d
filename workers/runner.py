"""Runs one task attempt: QUEUED -> RUNNING -> a final state, with timeout, cancellation and
the memory budget (workers.memory).

This is the one catch-all of the worker: whatever the task body raises is recorded on the
task (FAILED with a code of transitions.TaskErrorCode and a message naming the exception)
instead of escaping into arq. What each outcome writes is defined in taskrunner.transitions.

PostgreSQL restarting must not cost a task: the start and the writes that end an attempt
(its last lines, its final status) are retried with backoff while it cannot be reached, for
up to WORKER_WRITE_RETRY_SECONDS, and the attempt stays in the worker's heartbeat until
its final status is written, so no reconciler takes it for lost meanwhile. An attempt
whose write was refused because it moved on (fenced, see workers.task_context.Fence) records
nothing more.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from pydantic import ValidationError
from pydantic_core import to_jsonable_python
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import concurrency, deadlines, journal, metrics, tracing, transitions, workflows
from taskrunner.changes import Change, Outcome
from taskrunner.db import retry_unavailable
from taskrunner.events import EventKind
from taskrunner.logs import bind, event, unbind
from taskrunner.models import event_table, task_table
from taskrunner.retries import backoff, retries_left, retryable
from taskrunner.states import TaskStatus
from taskrunner.transitions import TaskErrorCode
from workers import hooks
from workers.catalog import TaskType
from workers.processes import BadResult, ProcessTaskError
from workers.task_context import Fence, TaskContext, run_with_context
from workers.worker_context import Running, WorkerContext

log = logging.getLogger(__name__)


async def execute(
    ctx: WorkerContext, task_type: TaskType, task_id: str, limited: bool = False
) -> str:
    """The arq job body for every task type; returns a short note for arq's log.
    `limited`: the task has a concurrency key, and starts only with a free slot."""
    engine, redis = ctx["engine"], ctx["redis"]
    tid = uuid.UUID(task_id)
    change = transitions.started(tid, ctx["worker_id"], limited=limited)
    tries = 0

    async def start_once() -> Outcome:
        nonlocal tries
        tries += 1
        return await journal.apply_one(engine, redis, change)

    start = await retry_unavailable(
        start_once, within=ctx["settings"].worker_write_retry_seconds, what=f"start {tid}"
    )
    if start.held_back:  # its key has no free slot: held back until one frees
        cast(dict[str, Any], ctx)[HELD_BACK] = tid  # see after_held_back
        return "held back: waiting for a concurrency slot"
    attempt: Attempt | None = None
    if start.accepted and start.row is not None:
        # Only its creation event before this start: it waited since it was created (or its
        # runAt). Otherwise (a retry, a cancelled task run again) the events say since when.
        row = start.row
        if row["event_seq"] == 1:  # (a workflow's step without parents too)
            attempt = _first_attempt(row)
        elif row["workflow_id"] is not None and row["attempts"] == 0 and row["event_seq"] == 2:
            # a step's first attempt, made ready (its one other event) when its last parent
            # finished: its parents' results say when
            results, ready_at = _parents(row)
            attempt = replace(_first_attempt(row, ready_at), parent_results=results)
        else:
            attempt = await _load(engine, tid)  # a later attempt: it waited since its re-queue
            if attempt is not None and attempt.workflow_id is not None:
                attempt = replace(attempt, parent_results=_parents(row)[0])
    elif tries > 1 and start.found is TaskStatus.RUNNING:
        # A try that failed with the connection may have committed: then the task runs
        # under this worker's id, and it is this worker's to run.
        async def reload() -> Attempt | None:
            found = await _load(engine, tid, worker_id=ctx["worker_id"])
            if found is not None and found.workflow_id is not None:
                results, _ = await workflows.parent_results(engine, tid)
                found = replace(found, parent_results=results)
            return found

        attempt = await retry_unavailable(  # the connection just failed: it may still be
            reload, within=ctx["settings"].worker_write_retry_seconds, what=f"load {tid}"
        )
    if attempt is None:  # cancelled, already run, a duplicate, or past its deadline
        if start.found is TaskStatus.QUEUED and await deadlines.fail_if_late(engine, redis, tid):
            return "failed: its deadline passed before it could start"
        return f"skipped: task is {start.found.value if start.found else 'gone'}"
    with tracing.task_span(attempt.trace_parent, task_type.name, task_id, attempt.number):
        final = await _attempt(ctx, task_type, tid, attempt)
    return str(final.to.value if final and final.to else "fenced")


HELD_BACK = "held_back"  # in a job's ctx: the task its start held back


async def after_held_back(ctx: dict[str, Any]) -> None:
    """arq's after_job_end. A held-back task's slot may have been released while arq was
    still finishing the job that held it back: the release's enqueue then found the job's
    keys still there (a no-op), and arq's finish deleted them. So once arq is done, a task
    that is ready again but not in Redis is enqueued (NX: a no-op when it is there)."""
    task_id = ctx.get(HELD_BACK)
    if task_id is None:
        return
    await concurrency.enqueue_if_released(ctx["engine"], ctx["redis"], task_id)


async def _attempt(
    ctx: WorkerContext, task_type: TaskType, tid: uuid.UUID, attempt: Attempt
) -> Change | None:
    """Run the body, decide the outcome (retry, memory kill), record it with its metrics.
    None: the attempt was fenced (it moved on while the body ran), nothing recorded."""
    memory = ctx["memory"]
    bind(task_id=str(tid), task_type=task_type.name, attempt=attempt.number)
    metrics.TASKS_RUNNING.inc()
    metrics.TASK_QUEUE_WAIT.labels(task_type.name).observe(attempt.queue_wait_seconds)
    event("task_started", queue_wait_seconds=round(attempt.queue_wait_seconds, 4))
    began = time.monotonic()
    fence = Fence()
    try:
        try:
            final = await _run_body(ctx, task_type, tid, attempt, fence)
        finally:
            run_seconds = time.monotonic() - began
            peak = memory.peak_mb(tid)
            killed = memory.finished(tid)
            metrics.TASKS_RUNNING.dec()
        if fence.tripped:  # the task is no longer this attempt's: it records nothing
            event("task_fenced", logging.WARNING, run_seconds=round(run_seconds, 4))
            return None
        if killed is not None:  # however the body ended, it was over the budget: no retry
            await _log(ctx, tid, attempt.number, "error", f"task_killed: {killed}")
            final = transitions.failed(tid, attempt.number, TaskErrorCode.LIMIT_EXCEEDED, killed)
        elif (
            final.to is TaskStatus.FAILED
            and final.retryable  # not a NonRetryable error, and one the type's retry_on lists
            and final.data["error"]["code"] != TaskErrorCode.BAD_INPUT  # it will not change
            and retries_left(attempt.max_retries, attempt.number)
        ):
            final = await _retry_later(ctx, task_type, tid, attempt, final)
        final = transitions.with_metrics(
            final,
            attempt=attempt.number,
            worker_id=ctx["worker_id"],
            queue_wait_seconds=attempt.queue_wait_seconds,
            run_seconds=run_seconds,
            peak_memory_mb=peak,
        )
        if attempt.workflow_id is not None:
            final = replace(final, step=True)  # its end is settled: see Change.step
        hook = hooks.hook_for(task_type, final)
        timeout = ctx["settings"].hook_timeout_seconds
        if hook is not None:  # recorded with the end: run once committed, at least once
            final = hooks.recorded(final, hook, attempt.number, lease_seconds=2 * timeout)
        _report(task_type.name, final, run_seconds, killed)
        recorded = await _record_final(ctx, tid, final)
        if attempt.concurrency_key is not None:  # its slot is free: start what waits for it
            await concurrency.release(
                ctx["engine"], ctx["redis"], [(attempt.owner, attempt.concurrency_key)]
            )
        if hook is not None and recorded:
            await hooks.run_recorded(ctx["engine"], tid, timeout)
        return final
    finally:
        running = ctx["running"].get(tid)
        if running is not None and running.attempt == attempt.number:  # not a later one's
            del ctx["running"][tid]
        unbind("task_id", "task_type", "attempt")


async def _record_final(ctx: WorkerContext, task_id: uuid.UUID, final: Change) -> bool:
    """Write the attempt's outcome, again with backoff while PostgreSQL cannot be reached
    (a try that failed with the connection and did commit makes the next one refused:
    the outcome is written once). Refused otherwise: the attempt moved on meanwhile.
    Whether it is written."""

    async def write() -> Outcome:
        return await journal.apply_one(ctx["engine"], ctx["redis"], final)

    outcome = await retry_unavailable(
        write, within=ctx["settings"].worker_write_retry_seconds, what=f"finish {task_id}"
    )
    if not outcome.accepted and outcome.found is not final.to:
        found = outcome.found.value if outcome.found else "gone"
        event("task_fenced", logging.WARNING, found=found)
        return False
    return True


def _report(task_type: str, final: Change, run_seconds: float, killed: str | None) -> None:
    """Prometheus and the named log events for an attempt's end."""
    status = final.to.value if final.to else "?"
    metrics.TASK_DURATION.labels(task_type).observe(run_seconds)
    metrics.TASKS_COMPLETED.labels(task_type, status).inc()
    fields: dict[str, Any] = {"status": status, "run_seconds": round(run_seconds, 4)}
    error = final.data.get("error")
    if error:
        fields["error_code"] = error["code"]
    if killed is not None:
        event("task_killed", logging.ERROR, reason=killed, **fields)
    elif error and error["code"] == TaskErrorCode.TIMEOUT:
        event("task_killed", logging.ERROR, reason=error["message"], **fields)
    name = {
        TaskStatus.SUCCEEDED: "task_succeeded",
        TaskStatus.CANCELLED: "task_cancelled",
        TaskStatus.QUEUED: "task_failed",  # failed, retried later
    }.get(final.to or TaskStatus.FAILED, "task_failed")
    event(name, logging.INFO if name != "task_failed" else logging.WARNING, **fields)


async def _retry_later(
    ctx: WorkerContext,
    task_type: TaskType,
    task_id: uuid.UUID,
    attempt: Attempt,
    failure: Change,
) -> Change:
    """Turn a failure into RUNNING -> QUEUED (`transitions.requeued`), due after the type's
    backoff."""
    delay = backoff(task_type.retry, attempt.number)
    error = failure.data["error"]
    code = TaskErrorCode(error["code"])
    return transitions.requeued(
        task_id, attempt.number, code, error["message"], delay, max_retries=attempt.max_retries
    )


@dataclass(frozen=True)
class Attempt:
    """What the runner needs of the task row, read once the attempt has started."""

    input: dict[str, Any]
    timeout_seconds: int
    number: int  # 1 for the first attempt
    max_retries: int
    cancel_requested: bool
    trace_parent: str | None
    queue_wait_seconds: float
    owner: str = ""
    concurrency_key: str | None = None
    workflow_id: uuid.UUID | None = None  # a workflow's step: ctx.parent_results is read
    parent_results: dict[str, Any] = field(default_factory=dict)


def _parents(row: Mapping[str, Any]) -> tuple[dict[str, Any], datetime | None]:
    """A starting step's parents' results by key and when the last one finished, as its
    start read them (changes.ROW_COLUMNS: `parents`)."""
    return workflows.parents_of(row.get("parents"))


def _first_attempt(row: Mapping[str, Any], ready_at: datetime | None = None) -> Attempt:
    """The first attempt of a task, from its row as the start transition locked it: it has
    waited since it was created, or its runAt, or `ready_at` (a step: when it became
    ready), whichever is last."""
    ready_at = max(
        row["created_at"], row["scheduled_for"] or row["created_at"], ready_at or row["created_at"]
    )
    return Attempt(
        row["input"],
        row["timeout_seconds"],
        1,
        row["max_retries"],
        row["cancel_requested"],
        row["trace_parent"],
        max(0.0, (row["locked_at"] - ready_at).total_seconds()),
        row["owner"],
        row["concurrency_key"],
        row["workflow_id"],
    )


async def _load(
    engine: AsyncEngine, task_id: uuid.UUID, *, worker_id: str | None = None
) -> Attempt | None:
    """The attempt the task's row shows (with `worker_id`: only if it runs on that worker,
    else None)."""
    t, e = task_table.c, event_table.c
    # The task waited since it last became QUEUED, or (a workflow's step) ready, or its
    # runAt, if later.
    queued_at = (
        sa.select(sa.func.max(e.at))
        .where(
            e.task_id == task_id,
            sa.or_(
                sa.and_(
                    e.kind == EventKind.STATUS.value,
                    e.data["status"].astext == TaskStatus.QUEUED.value,
                ),
                e.kind == EventKind.STEP_READY.value,
            ),
        )
        .scalar_subquery()
    )
    ready_at = sa.func.greatest(queued_at, t.scheduled_for)
    query = sa.select(
        t.input,
        t.timeout_seconds,
        t.attempts,
        t.max_retries,
        t.cancel_requested,
        t.trace_parent,
        sa.func.extract("epoch", t.started_at - ready_at).label("queue_wait"),
        t.owner,
        t.concurrency_key,
        t.workflow_id,
    ).where(t.id == task_id)
    if worker_id is not None:
        query = query.where(t.status == TaskStatus.RUNNING.value, t.worker_id == worker_id)
    async with engine.connect() as conn:
        row = (await conn.execute(query)).one_or_none()
    if row is None:
        return None
    return Attempt(
        row.input,
        row.timeout_seconds,
        row.attempts,
        row.max_retries,
        row.cancel_requested,
        row.trace_parent,
        max(0.0, float(row.queue_wait or 0)),
        row.owner,
        row.concurrency_key,
        row.workflow_id,
    )


async def _run_body(
    ctx: WorkerContext, task_type: TaskType, task_id: uuid.UUID, attempt: Attempt, fence: Fence
) -> Change:
    """Run the task's coroutine and turn how it ended into the final change. The attempt
    stays in `ctx["running"]` after the body: `_attempt` removes it once its outcome is
    written."""
    settings = ctx["settings"]
    try:
        data = task_type.input_model.model_validate(
            attempt.input,
            context={
                "max_runtime_seconds": settings.task_max_runtime_seconds,
                "settings": settings,
            },
        )
    except ValidationError as exc:
        message = f"stored input no longer valid: {exc}"
        if attempt.workflow_id is not None:
            message = f"input (with its bindings from its parents' results) is not valid: {exc}"
        return transitions.failed(task_id, attempt.number, TaskErrorCode.BAD_INPUT, message)
    tctx = TaskContext(
        task_id,
        attempt.number,
        settings,
        ctx["engine"],
        ctx["redis"],
        store=ctx["store"],
        fence=fence,
        parent_results=attempt.parent_results,
    )
    memory = ctx["memory"]
    start = _starter(ctx, task_type, tctx, data)
    body = asyncio.create_task(run_with_context(tctx, start), name=f"task:{task_id}")
    fence.body = body
    ctx["running"][task_id] = Running(attempt.number, body)
    memory.started(task_id)
    asked = ctx["cancel_requests"].pop((task_id, attempt.number), None) is not None
    if asked or attempt.cancel_requested:
        body.cancel()  # asked while this attempt was starting
    timer = asyncio.timeout(attempt.timeout_seconds)
    try:
        try:
            async with timer:
                result = await body
        finally:
            # Its last progress and lines come before the outcome. Outside the timer: the
            # body's time is over, and while PostgreSQL is away they may wait.
            await tctx.close()
    except TimeoutError as exc:
        if not timer.expired():  # raised by the task itself: an error like any other
            return await _raised(ctx, task_type, task_id, attempt.number, exc)
        await _log(
            ctx,
            task_id,
            attempt.number,
            "error",
            f"task_killed: exceeded {attempt.timeout_seconds}s",
        )
        message = f"exceeded its timeout of {attempt.timeout_seconds}s"
        return transitions.failed(task_id, attempt.number, TaskErrorCode.TIMEOUT, message)
    except BadResult as exc:  # a process task's
        return transitions.failed(task_id, attempt.number, TaskErrorCode.BAD_RESULT, str(exc))
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            await _hand_back(ctx, task_id, attempt.number)  # the worker is stopping, not the user
            raise
        return transitions.cancelled(task_id, attempt.number)
    except Exception as exc:
        return await _raised(ctx, task_type, task_id, attempt.number, exc)
    try:
        payload = to_jsonable_python(result)
    except Exception as exc:
        message = f"result is not JSON-serializable: {exc}"
        return transitions.failed(task_id, attempt.number, TaskErrorCode.BAD_RESULT, message)
    return transitions.succeeded(task_id, attempt.number, payload)


def _starter(
    ctx: WorkerContext, task_type: TaskType, tctx: TaskContext, data: Any
) -> Callable[[], Awaitable[Any]]:
    """What starts the body: in a child process (workers.processes) for a process task (a
    plain `def run`, or `in_process(input)` true: its `run_in_process`), else the type's
    coroutine in this loop, metered for the memory budget."""
    function = "run" if task_type.process else None
    if function is None and task_type.in_process is not None and task_type.in_process(data):
        function = "run_in_process"
    if function is not None:
        processes, module, name = ctx["processes"], task_type.module, function
        return lambda: processes.run(tctx, module, data, function=name)
    memory = ctx["memory"]
    return lambda: memory.metered(tctx.task_id, task_type.run(tctx, data))


async def _raised(
    ctx: WorkerContext, task_type: TaskType, task_id: uuid.UUID, attempt: int, exc: BaseException
) -> Change:
    """The body raised `exc`: its traceback goes to the attempt's log, and the attempt
    fails with the exception's code (transitions.error_of), retryable or not as the
    exception and the type's RETRY say (retries.retryable)."""
    # a process task's failure carries its line: the child's traceback, or how it died
    line = exc.log if isinstance(exc, ProcessTaskError) else None
    await _log(ctx, task_id, attempt, "error", line or "".join(traceback.format_exception(exc)))
    code, message = transitions.error_of(exc)
    failure = transitions.failed(task_id, attempt, code, message)
    return failure if retryable(task_type.retry, exc) else replace(failure, retryable=False)


async def _log(ctx: WorkerContext, task_id: uuid.UUID, attempt: int, level: str, line: str) -> None:
    """A line of the runner's own (a traceback, a retry), before the outcome; again while
    PostgreSQL cannot be reached."""
    change = transitions.log_line(task_id, attempt, level, line)

    async def write() -> Outcome:
        return await journal.apply_one(ctx["engine"], ctx["redis"], change)

    await retry_unavailable(
        write, within=ctx["settings"].worker_write_retry_seconds, what=f"log of {task_id}"
    )


async def _hand_back(ctx: WorkerContext, task_id: uuid.UUID, attempt: int) -> None:
    """Put a task this stopping worker was running back to QUEUED for another worker."""
    change = transitions.handed_back(task_id, attempt)
    try:
        await asyncio.shield(journal.apply_one(ctx["engine"], ctx["redis"], change))
    except Exception:
        log.exception("could not hand task %s back; the reconciler will", task_id)
