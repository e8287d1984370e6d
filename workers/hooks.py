"""User hooks: a task module's `on_success`, `on_failure` and `on_retry`, run at least once
after the status they follow is committed.

A hook is `async def on_success(task: HookTask) -> None` (the same for the others) in the
module that defines the task type. The attempt's end that calls for one records it on the
task row, in the statement that records the end (`task.hooks_due`, e.g. `on_retry:2`, with
a lease in `hooks_lease`); once committed, the worker runs it and clears it. A worker that
dies in between leaves it recorded: when the lease has run out, any worker that knows the
type runs it (`run_due`, a background loop). So a hook may run more than once (make it
idempotent), never zero times, and never before its status is committed.

A hook that raises or runs past HOOK_TIMEOUT_SECONDS is logged (`hook_failed`) and not run
again: it never changes the task's status.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner.changes import Change, Sql, seconds_from_now
from taskrunner.connections import connection
from taskrunner.logs import event
from taskrunner.states import TaskStatus
from workers.catalog import TaskType, catalog

log = logging.getLogger(__name__)

HOOKS = ("on_success", "on_failure", "on_retry")
SWEEP_BATCH = 50  # recorded hooks a worker takes over per round


@dataclass(frozen=True)
class HookTask:
    """The task a hook is about, as it is when the hook runs."""

    id: uuid.UUID
    type: str
    status: str
    input: dict[str, Any]
    attempt: int  # the attempt whose end called for the hook
    result: Any
    error_code: str | None
    error_message: str | None
    labels: list[str]
    owner: str
    created_at: datetime
    finished_at: datetime | None


Hook = Callable[[HookTask], Awaitable[None]]


def hook_for(task_type: TaskType, final: Change) -> str | None:
    """The hook an attempt's end calls for, if the type defines it: on_success for
    SUCCEEDED, on_failure for FAILED, on_retry for a failure queued again."""
    name = (
        {
            TaskStatus.SUCCEEDED: "on_success",
            TaskStatus.FAILED: "on_failure",
            TaskStatus.QUEUED: "on_retry",
        }.get(final.to)
        if final.to is not None
        else None
    )
    return name if name is not None and name in task_type.hooks else None


def recorded(final: Change, hook: str, attempt: int, lease_seconds: float) -> Change:
    """`final` that also records `hook` as due, leased to this worker for `lease_seconds`."""
    due = Sql("array_append(hooks_due, $)", f"{hook}:{attempt}", "text")
    lease = seconds_from_now(lease_seconds)
    return replace(final, values={**final.values, "hooks_due": due, "hooks_lease": lease})


READ = """
SELECT id, type, status, input, result, error_code, error_message, labels, owner,
       created_at, finished_at, hooks_due
FROM task WHERE id = $1"""
# Remove the hooks run from what is due (NULL once none is left) and end the lease.
DONE = """
UPDATE task SET hooks_due = nullif(array(SELECT h FROM unnest(hooks_due) h
                                         WHERE NOT h = ANY($2::text[])), '{}'),
                hooks_lease = NULL
WHERE id = $1"""
# Hooks due whose lease ran out (their worker died), of the types this worker knows: leased
# to this worker now.
TAKE = """
UPDATE task SET hooks_lease = clock_timestamp() + make_interval(secs => $3)
WHERE id IN (
  SELECT id FROM task
  WHERE hooks_due IS NOT NULL AND hooks_lease < clock_timestamp() AND type = ANY($1::text[])
  ORDER BY hooks_lease LIMIT $2
  FOR UPDATE SKIP LOCKED
)
RETURNING id"""


async def run_recorded(engine: AsyncEngine, task_id: uuid.UUID, within: float) -> int:
    """Run the hooks recorded as due on the task, in order, then clear them; how many ran.
    Each hook's failure is logged, never raised."""
    async with connection(engine) as conn:
        row = await conn.fetchrow(READ, task_id)
    if row is None or not row["hooks_due"]:
        return 0
    task_type = catalog().get(row["type"])
    due: list[str] = list(row["hooks_due"])
    for entry in due:
        name, _, attempt = entry.partition(":")
        hook = task_type.hooks.get(name) if task_type is not None else None
        if hook is None:
            event("hook_failed", logging.WARNING, hook=name, reason="the type defines no such hook")
            continue
        await _run_one(hook, name, _task_of(row, int(attempt or 0)), within)
    async with connection(engine) as conn:
        await conn.execute(DONE, task_id, due)
    return len(due)


def _task_of(row: Any, attempt: int) -> HookTask:
    return HookTask(
        id=row["id"],
        type=row["type"],
        status=row["status"],
        input=row["input"],
        attempt=attempt,
        result=row["result"],
        error_code=row["error_code"],
        error_message=row["error_message"],
        labels=list(row["labels"] or []),
        owner=row["owner"],
        created_at=row["created_at"],
        finished_at=row["finished_at"],
    )


async def _run_one(hook: Hook, name: str, task: HookTask, within: float) -> None:
    fields = {
        "hook": name,
        "task_id": str(task.id),
        "task_type": task.type,
        "attempt": task.attempt,
    }
    try:
        await asyncio.wait_for(hook(task), within)
    except asyncio.CancelledError:
        raise
    except TimeoutError:
        event("hook_failed", logging.WARNING, reason=f"ran past {within}s", **fields)
    except Exception as exc:
        log.warning("hook %s of task %s raised", name, task.id, exc_info=True)
        event("hook_failed", logging.WARNING, reason=f"{type(exc).__name__}: {exc}", **fields)
    else:
        event("hook_ran", logging.DEBUG, **fields)


async def run_due(engine: AsyncEngine, within: float, lease_seconds: float) -> int:
    """Run the hooks whose worker died before it ran them (their lease ran out), for the
    types this worker knows; how many tasks' hooks ran."""
    types = [name for name, t in catalog().items() if t.hooks]
    if not types:
        return 0
    async with connection(engine) as conn:
        ids = [r["id"] for r in await conn.fetch(TAKE, types, SWEEP_BATCH, lease_seconds)]
    for task_id in ids:
        await run_recorded(engine, task_id, within)
    return len(ids)
