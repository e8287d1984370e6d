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
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import transitions
from taskrunner.changes import Change
from taskrunner.connections import connection
from taskrunner.logs import event
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
    """The hook an attempt's end calls for (transitions.hook_of), if the type defines it."""
    name = transitions.hook_of(final)
    return name if name is not None and name in task_type.hooks else None


def recorded(final: Change, hook: str, attempt: int, lease_seconds: float) -> Change:
    """`final` that also records `hook` as due, leased to this worker for `lease_seconds`."""
    return transitions.with_hook(final, hook, attempt, lease_seconds)


READ = """
SELECT id, type, status, input, result, error_code, error_message, labels, owner,
       created_at, finished_at, hooks_due
FROM task WHERE id = $1"""
# Remove the hooks run from what is due (NULL once none is left); the lease ends with the
# last of them. Hooks recorded meanwhile (a later attempt's) keep the lease of the worker
# that recorded them: its run, or the sweep once it runs out, takes them.
DONE = """
UPDATE task
SET hooks_due = nullif(array(SELECT h FROM unnest(hooks_due) h WHERE NOT h = ANY($2::text[])),
                       '{}'),
    hooks_lease = CASE WHEN hooks_due <@ $2::text[] THEN NULL ELSE hooks_lease END
WHERE id = $1"""
# The task with hooks due whose lease ran out (their worker died) longest ago, of the types
# this worker knows: leased to this worker now (one at a time: a lease covers one task's
# hooks, not a queue of them).
TAKE = """
UPDATE task SET hooks_lease = clock_timestamp() + make_interval(secs => $2)
WHERE id = (
  SELECT id FROM task
  WHERE hooks_due IS NOT NULL AND coalesce(hooks_lease, '-infinity') < clock_timestamp()
    AND type = ANY($1::text[])
  ORDER BY hooks_lease NULLS FIRST LIMIT 1
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
    except TimeoutError as exc:
        # wait_for's own, or one the hook raised: both end it
        reason = f"ran past {within}s" if not str(exc) else f"TimeoutError: {exc}"
        event("hook_failed", logging.WARNING, reason=reason, **fields)
    except Exception as exc:
        log.warning("hook %s of task %s raised", name, task.id, exc_info=True)
        event("hook_failed", logging.WARNING, reason=f"{type(exc).__name__}: {exc}", **fields)
    else:
        event("hook_ran", logging.DEBUG, **fields)


async def run_due(engine: AsyncEngine, within: float, lease_seconds: float) -> int:
    """Run the hooks whose worker died before it ran them (their lease ran out, or the
    reconciler recorded them), for the types this worker knows, one task at a time, at most
    SWEEP_BATCH; how many tasks' hooks ran."""
    types = [name for name, t in catalog().items() if t.hooks]
    ran = 0
    while types and ran < SWEEP_BATCH:
        async with connection(engine) as conn:
            task_id = await conn.fetchval(TAKE, types, lease_seconds)
        if task_id is None:
            break
        await run_recorded(engine, task_id, within)
        ran += 1
    return ran
