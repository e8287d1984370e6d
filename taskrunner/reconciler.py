"""Keeps PostgreSQL and the queue in step; makes a lost task impossible.

- `enqueue_due`: tasks that waited in PostgreSQL (runAt, retry backoff) go to the queue
  when due. Rows are claimed with SKIP LOCKED, so any number of workers can run it.
- `requeue_lost`: QUEUED tasks that Redis does not hold (the api died between commit and
  enqueue, Redis was flushed or restarted without its data) are enqueued again.
- `recover_orphans`: RUNNING tasks of a worker whose heartbeat stopped run again (if
  retries remain) or fail with WORKER_LOST, once `due_orphans` says they have been
  suspected for a whole grace period.
Every step is idempotent: a job is enqueued NX, a transition is conditional.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from arq import ArqRedis
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import concurrency, journal, queue, transitions
from taskrunner.heartbeats import SUSPECTS
from taskrunner.models import task_table
from taskrunner.states import TaskStatus

BATCH = 1000


async def enqueue_due(engine: AsyncEngine, pool: ArqRedis, limit: int = BATCH) -> int:
    """Hand due tasks to the queue; returns how many."""
    claim = sa.text(
        "WITH due AS (SELECT id FROM task WHERE due_at <= clock_timestamp() "
        "AND status = 'QUEUED' ORDER BY due_at LIMIT :limit FOR UPDATE SKIP LOCKED) "
        "UPDATE task SET due_at = NULL FROM due WHERE task.id = due.id "
        "RETURNING task.id, task.type, task.priority, task.queue, task.concurrency_key, "
        "task.owner, task.rate_limit"
    )
    async with engine.begin() as conn:
        rows = (await conn.execute(claim, {"limit": limit})).all()
    await queue.enqueue(pool, [queue.job_of(r) for r in rows])
    return len(rows)


async def requeue_lost(
    engine: AsyncEngine, pool: ArqRedis, limit: int = BATCH, *, grace_seconds: float = 0.0
) -> int:
    """Enqueue ready QUEUED tasks that Redis does not hold; returns how many. Tasks created
    in the last `grace_seconds` are left alone: their api is about to enqueue them (between
    its commit and its enqueue they are in neither place, and that is no loss)."""
    t = task_table.c
    query = (
        sa.select(t.id, t.type, t.priority, t.queue, t.concurrency_key, t.owner, t.rate_limit)
        .where(
            t.status == TaskStatus.QUEUED.value,
            t.due_at.is_(None),
            t.waiting.is_(None),
            t.created_at < sa.func.clock_timestamp() - timedelta(seconds=grace_seconds),
        )
        .order_by(t.priority.desc(), t.created_at)
        .limit(limit)
    )
    async with engine.connect() as conn:
        rows = {r.id: r for r in (await conn.execute(query)).all()}
    lost = await queue.missing(pool, [queue.job_of(r) for r in rows.values()])
    if lost:  # a worker may have finished some meanwhile: keep those still waiting
        async with engine.connect() as conn:
            still = set(
                await conn.scalars(
                    sa.select(t.id).where(
                        t.id.in_([j.task_id for j in lost]),
                        t.status == TaskStatus.QUEUED.value,
                        t.due_at.is_(None),
                        t.waiting.is_(None),
                    )
                )
            )
        lost = [j for j in lost if j.task_id in still]
    await queue.enqueue(pool, lost)
    return len(lost)


async def find_orphans(
    engine: AsyncEngine, live: dict[str, set[uuid.UUID]], *, grace_seconds: float
) -> list[Any]:
    """RUNNING tasks, started over `grace_seconds` ago, that no live worker lists as running
    (its worker died, or lost track of it after an error)."""
    t = task_table.c
    query = sa.select(
        t.id,
        t.type,
        t.priority,
        t.attempts,
        t.max_retries,
        t.cancel_requested,
        t.worker_id,
        t.owner,
        t.queue,
        t.concurrency_key,
        t.rate_limit,
    ).where(
        t.status == TaskStatus.RUNNING.value,
        t.started_at < sa.func.clock_timestamp() - timedelta(seconds=grace_seconds),
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query.limit(BATCH))).all()
    return [r for r in rows if r.id not in live.get(r.worker_id or "", set())]


# One round of suspicion, atomic with respect to heartbeats: forget suspects that are no
# longer candidates, note new ones at Redis' clock (ms), return those suspected for ARGV[1]
# ms. KEYS[1]: the SUSPECTS hash; ARGV[2..]: the candidates' ids.
DUE_ORPHANS = """
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local candidate, due = {}, {}
for i = 2, #ARGV do candidate[ARGV[i]] = true end
for _, id in ipairs(redis.call('HKEYS', KEYS[1])) do
  if not candidate[id] then redis.call('HDEL', KEYS[1], id) end
end
for i = 2, #ARGV do
  redis.call('HSETNX', KEYS[1], ARGV[i], now)
  if now - tonumber(redis.call('HGET', KEYS[1], ARGV[i])) >= tonumber(ARGV[1]) then
    due[#due + 1] = ARGV[i]
  end
end
return due
"""


async def due_orphans(redis: Redis, candidates: list[Any], *, grace_seconds: float) -> list[Any]:
    """Those of `candidates` (find_orphans) suspected for a whole `grace_seconds`, so that a
    moment without heartbeats (Redis restarted or flushed) recovers nothing. Suspicion
    lives in Redis, shared by the reconcilers of all workers (whichever holds the lock in
    a round), on Redis' clock; a task no longer a candidate is forgotten, and a heartbeat
    listing a task clears it (heartbeats.beat): a worker seen again is no longer suspect,
    also when no reconciler looked while it was."""
    script = redis.register_script(DUE_ORPHANS)
    ids = [str(row.id) for row in candidates]
    found = await script(keys=[SUSPECTS], args=[int(grace_seconds * 1000), *ids])
    due = {item.decode() if isinstance(item, bytes) else str(item) for item in found}
    return [row for row in candidates if str(row.id) in due]


async def recover_orphans(
    engine: AsyncEngine,
    pool: ArqRedis,
    orphans: list[Any],
    hooks: Mapping[str, Collection[str]] | None = None,
) -> int:
    """Run orphans again (retries left), cancel them (cancel requested), or fail them with
    WORKER_LOST: `transitions.lost`; with the hook that end calls for recorded as due at
    once (its on_retry or on_failure, if `hooks`, by task type, has it: workers.hooks).
    Each change holds only if the row is still that attempt of that worker."""
    if not orphans:
        return 0
    changes = []
    for r in orphans:
        change = transitions.lost(
            r.id,
            attempt=r.attempts,
            worker_id=r.worker_id,
            max_retries=r.max_retries,
            cancel_requested=r.cancel_requested,
        )
        hook = transitions.hook_of(change)
        if hooks is not None and hook is not None and hook in hooks.get(r.type, ()):
            change = transitions.with_hook(change, hook, r.attempts, lease_seconds=0)
        changes.append(change)
    outcomes = await journal.apply(engine, pool, changes)
    again = [
        queue.job_of(r)
        for r, o in zip(orphans, outcomes, strict=True)
        if o.accepted and o.change.to is TaskStatus.QUEUED
    ]
    await queue.redeliver(pool, again)
    # their concurrency slots are free again: start what waited for them
    freed = [
        (r.owner, key)
        for r, o in zip(orphans, outcomes, strict=True)
        if o.accepted and (key := getattr(r, "concurrency_key", None)) is not None
    ]
    await concurrency.release(engine, pool, freed)
    return sum(o.accepted for o in outcomes)
