"""options.deadline: a task never starts after it. Two guards:
- the start itself (transitions.started) is refused past the deadline (changes.LATE, in the
  statement that would start it), and the worker that was refused fails the task at once
  (`fail_if_late`);
- every worker sweeps (`expire`) the QUEUED tasks whose deadline passed, wherever they wait:
  in the queue, in PostgreSQL (runAt, a retry's backoff), held back for a concurrency slot
  or a rate limit. Each ends FAILED with DEADLINE_EXCEEDED (transitions.deadline_exceeded,
  only from QUEUED: a task that started meanwhile is left to run), and its job leaves the
  queue.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from arq import ArqRedis
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import journal, queue, transitions
from taskrunner.changes import LATE
from taskrunner.logs import event

BATCH = 500

# Uses ix_task_deadline (migration 0012): waiting tasks that have a deadline.
OVERDUE = sa.text(
    f"SELECT id, queue FROM task WHERE status = 'QUEUED' AND {LATE} "
    "AND deadline IS NOT NULL ORDER BY deadline LIMIT :limit"
)


async def expire(engine: AsyncEngine, redis: Redis, pool: ArqRedis, limit: int = BATCH) -> int:
    """Fail the QUEUED tasks whose deadline passed (at most `limit` a call); returns how
    many."""
    async with engine.connect() as conn:
        rows = (await conn.execute(OVERDUE, {"limit": limit})).all()
    if not rows:
        return 0
    outcomes = await journal.apply(
        engine, redis, [transitions.deadline_exceeded(r.id) for r in rows]
    )
    failed = [(r.id, r.queue) for r, o in zip(rows, outcomes, strict=True) if o.accepted]
    await queue.remove_many(pool, failed)
    for task_id, _ in failed:
        event("task_deadline_exceeded", task_id=str(task_id))
    return len(failed)


async def fail_if_late(engine: AsyncEngine, redis: Redis, task_id: uuid.UUID) -> bool:
    """A start of `task_id` was refused while it is QUEUED: if its deadline passed, fail it
    now (DEADLINE_EXCEEDED) rather than at the next sweep. Whether it did."""
    async with engine.connect() as conn:
        late = await conn.scalar(
            sa.text(f"SELECT {LATE} FROM task WHERE id = :id AND status = 'QUEUED'"),
            {"id": task_id},
        )
    if not late:
        return False
    outcome = await journal.apply_one(engine, redis, transitions.deadline_exceeded(task_id))
    if outcome.accepted:
        event("task_deadline_exceeded", task_id=str(task_id))
    return outcome.accepted
