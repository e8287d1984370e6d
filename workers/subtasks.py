"""Subtasks: a task body submits tasks of its own (`ctx.submit`) and may wait for them
(`ctx.wait`).

A child has its parent's owner, `Task.parentId` set, and is listed in the parent's
`children`. Cancelling the parent cancels its unfinished children, and theirs, except
children submitted `detached` (taskrunner.control.cancel_children); a child submitted while
its parent is being cancelled is cancelled at once. A child is checked as submitTask checks
a task (taskrunner.options: the same BAD_INPUT messages), without TASKS_PER_MINUTE: the
parent was counted.

Waiting holds the parent's worker slot (and its timeout runs) until the children end: a
parent that waits for children which wait for a slot on the same workers can starve them,
so keep WORKER_CONCURRENCY above the depth of waiting parents. A retried parent submits its
children again: pass `idempotencyKey` to get the first attempt's children back.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from arq import ArqRedis

from taskrunner import actors, control, submissions
from taskrunner.errors import BadInput, NotFound
from taskrunner.models import task_table
from taskrunner.options import options_from, submission
from taskrunner.states import TERMINAL, TaskStatus
from workers.catalog import catalog

if TYPE_CHECKING:
    from workers.task_context import TaskContext

BY_TASK = actors.system(actors.System.TASK)  # a running task submitted it (ctx.submit)
WAIT_POLL_SECONDS = (0.05, 0.5)  # first and longest wait between looks at the children


@dataclass(frozen=True)
class ChildResult:
    """How a child ended (ctx.wait)."""

    id: uuid.UUID
    status: TaskStatus
    result: Any = None
    error_code: str | None = None
    error_message: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status is TaskStatus.SUCCEEDED


async def submit(
    ctx: TaskContext,
    spec: Mapping[str, Any],
    options: Mapping[str, Any] | None = None,
    *,
    detached: bool = False,
) -> uuid.UUID:
    """Submit the child task `spec` ({type name: input}, as submitTask's `task`) with
    `options` (submitTask's, camelCase or snake_case names); its id."""
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise BadInput(
            "spec: give exactly one task type and its input, e.g. {'echo': {'message': 'hi'}}",
            field="spec",
        )
    ((name, raw),) = spec.items()
    task_type = catalog().get(name)
    if task_type is None:
        raise BadInput(
            f"spec.{name}: no such task type; use one of {', '.join(catalog())}",
            field=f"spec.{name}",
        )
    checked = submission(task_type, raw, options_from(options), ctx.settings, "spec")
    owner, key_id = await _owner(ctx)
    checked = replace(checked, parent_id=ctx.task_id, detached=detached, key_id=key_id)
    pool = cast(ArqRedis, ctx.redis)  # the worker's arq pool
    (child,) = await submissions.submit(
        engine=ctx.engine,
        redis=ctx.redis,
        pool=pool,
        owner=owner,
        submissions=[checked],
        actor=BY_TASK,
        key_ttl=ctx.settings.idempotency_key_ttl(),
    )
    if not detached and await _cancelling(ctx):  # the cancel's cascade may have missed it
        await control.cancel_children(
            engine=ctx.engine, redis=ctx.redis, pool=pool, parent_ids=[ctx.task_id], actor=BY_TASK
        )
    return child.id


async def _owner(ctx: TaskContext) -> tuple[str, uuid.UUID | None]:
    """The owner of the running task, and the key that submitted it (its children's too:
    it signs their webhooks)."""
    t = task_table.c
    async with ctx.engine.connect() as conn:
        query = sa.select(t.owner, t.key_id).where(t.id == ctx.task_id)
        row = (await conn.execute(query)).first()
    if row is None:
        raise NotFound(f"task {ctx.task_id} is gone")
    return str(row.owner), row.key_id


async def _cancelling(ctx: TaskContext) -> bool:
    t = task_table.c
    async with ctx.engine.connect() as conn:
        return bool(await conn.scalar(sa.select(t.cancel_requested).where(t.id == ctx.task_id)))


async def wait(ctx: TaskContext, children: Iterable[uuid.UUID | str]) -> list[ChildResult]:
    """Wait until every one of `children` (ids ctx.submit returned) has ended; how each
    ended, in the order given. The parent's timeout bounds the wait (or wrap it in
    `asyncio.timeout`). Only the parent's children can be waited for."""
    ids = [uuid.UUID(str(c)) for c in children]
    pause = WAIT_POLL_SECONDS[0]
    while True:
        rows = await _children(ctx, ids)
        if all(TaskStatus(r.status) in TERMINAL for r in rows.values()):
            return [
                ChildResult(r.id, TaskStatus(r.status), r.result, r.error_code, r.error_message)
                for r in (rows[i] for i in ids)
            ]
        await asyncio.sleep(pause)
        pause = min(2 * pause, WAIT_POLL_SECONDS[1])


async def _children(ctx: TaskContext, ids: list[uuid.UUID]) -> dict[uuid.UUID, Any]:
    t = task_table.c
    query = sa.select(t.id, t.status, t.result, t.error_code, t.error_message).where(
        t.id.in_(ids), t.parent_id == ctx.task_id
    )
    async with ctx.engine.connect() as conn:
        rows = {r.id: r for r in await conn.execute(query)}
    missing = [str(i) for i in ids if i not in rows]
    if missing:
        raise BadInput(
            f"children: {', '.join(missing)} are not children of task {ctx.task_id}; pass the "
            "ids ctx.submit returned",
            field="children",
        )
    return rows
