"""Concurrency keys: at most `concurrency_limit` of an owner's tasks with one
`concurrency_key` RUNNING at once, across every worker.

PostgreSQL decides, in the start itself: a task with a key is delivered like any other, and
its start (transitions.started(limited=True): Change.take_slot) is checked by
`taskrunner_take_slots` (migration 0009) inside the statement that records the group of
starts it belongs to (taskrunner/fastpath.py; first in the transaction on the journal's
other path): under the key's transaction lock it counts the key's running tasks. With a
slot free the task starts; without one it is held back (QUEUED, `waiting =
'concurrency'`, out of the queue: Outcome.held_back), using no attempt and no timeout.
The check adds no round trip to the start.

When a task with a key stops running (it ended, was re-queued, or its worker was declared
lost), `release` hands the freed slots to the oldest held-back tasks of the key (priority
first): one statement, under the same lock, then they are enqueued. The lock makes the two
meet: a start that counted before an end committed is held back before the end's release
looks for held-back tasks. A release lost to a crash is made by `release_all`, which the
reconciler runs each round.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from arq import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import queue
from taskrunner.connections import connection

WAITING = "concurrency"  # task.waiting while held back for a slot


# (owner and rate_limit never change: the statement's snapshot of the row has them)
RELEASE = (
    "SELECT r.id, r.type, r.priority, r.queue, "
    "(SELECT t.rate_limit FROM task t WHERE t.id = r.id) AS rate_limit "
    "FROM taskrunner_release_slots($1, $2) r"
)


async def release(
    engine: AsyncEngine, pool: ArqRedis, keys: Iterable[tuple[str, str | None]]
) -> int:
    """Slots of these (owner, key) pairs may be free: enqueue as many held-back tasks of
    each as there are; returns how many."""
    pairs = sorted({(o, k) for o, k in keys if k is not None})
    if not pairs:
        return 0
    jobs = []
    # one statement per key, each its own transaction: one key's lock at a time (a group of
    # starts takes its keys' locks in another order)
    async with connection(engine) as conn:
        for owner, key in pairs:
            for row in await conn.fetch(RELEASE, owner, key):
                jobs.append(
                    queue.Job(
                        row["type"],
                        row["id"],
                        row["priority"],
                        row["queue"],
                        True,
                        owner=owner,
                        rate_limit=row["rate_limit"],
                    )
                )
    await queue.enqueue(pool, jobs)
    return len(jobs)


async def release_all(engine: AsyncEngine, pool: ArqRedis) -> int:
    """`release` for every key with held-back tasks (the reconciler's repair)."""
    async with connection(engine) as conn:
        rows = await conn.fetch(
            "SELECT DISTINCT owner, concurrency_key FROM task "
            "WHERE status = 'QUEUED' AND waiting = $1 AND concurrency_key IS NOT NULL",
            WAITING,
        )
    return await release(engine, pool, [(r["owner"], r["concurrency_key"]) for r in rows])


async def enqueue_if_released(engine: AsyncEngine, pool: ArqRedis, task_id: uuid.UUID) -> None:
    """Enqueue the task if it is ready (QUEUED, released, due) and Redis lacks its job."""
    async with connection(engine) as conn:
        row = await conn.fetchrow(
            "SELECT id, type, priority, queue, owner, rate_limit FROM task "
            "WHERE id = $1 AND status = 'QUEUED' "
            "AND waiting IS NULL AND due_at IS NULL",
            task_id,
        )
    if row is None:
        return
    job = queue.Job(
        row["type"],
        row["id"],
        row["priority"],
        row["queue"],
        True,
        owner=row["owner"],
        rate_limit=row["rate_limit"],
    )
    await queue.enqueue(pool, await queue.missing(pool, [job]))
