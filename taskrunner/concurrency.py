"""Concurrency keys: at most `concurrency_limit` of an owner's tasks with one
`concurrency_key` RUNNING at once, across every worker.

PostgreSQL decides, in the start itself: a task with a key is delivered like any other, and
its start runs in a transaction that first calls `taskrunner_take_slot` (migration 0009:
one statement that takes the key's transaction lock and counts its running tasks). With a
slot free the task starts in that transaction; without one it is held back (QUEUED,
`waiting = 'concurrency'`, out of the queue), using no attempt and no timeout.

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

import asyncpg
from arq import ArqRedis
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import journal, queue
from taskrunner.changes import Change, Outcome
from taskrunner.connections import transaction
from taskrunner.events import publish

WAITING = "concurrency"  # task.waiting while held back for a slot


async def start(engine: AsyncEngine, redis: Redis, change: Change) -> Outcome | None:
    """Record `change` (transitions.started) if the task's key has a free slot; else hold
    the task back and return None. Publishes the start's event once committed."""

    async def attempt(conn: asyncpg.Connection) -> Outcome | None:
        if not await conn.fetchval("SELECT taskrunner_take_slot($1)", change.task_id):
            return None
        (outcome,) = await journal.record(conn, [change])
        return outcome

    outcome = await journal.run_transaction(engine, attempt)
    if outcome is not None and outcome.event is not None:
        await publish(redis, [outcome.event])
    return outcome


RELEASE = "SELECT id, type, priority, queue FROM taskrunner_release_slots($1, $2)"


async def release(
    engine: AsyncEngine, pool: ArqRedis, keys: Iterable[tuple[str, str | None]]
) -> int:
    """Slots of these (owner, key) pairs may be free: enqueue as many held-back tasks of
    each as there are; returns how many."""
    pairs = sorted({(o, k) for o, k in keys if k is not None})
    if not pairs:
        return 0
    jobs = []
    async with transaction(engine) as conn:
        for owner, key in pairs:
            for row in await conn.fetch(RELEASE, owner, key):
                jobs.append(queue.Job(row["type"], row["id"], row["priority"], row["queue"], True))
    await queue.enqueue(pool, jobs)
    return len(jobs)


async def release_all(engine: AsyncEngine, pool: ArqRedis) -> int:
    """`release` for every key with held-back tasks (the reconciler's repair)."""
    async with transaction(engine) as conn:
        rows = await conn.fetch(
            "SELECT DISTINCT owner, concurrency_key FROM task "
            "WHERE status = 'QUEUED' AND waiting = $1 AND concurrency_key IS NOT NULL",
            WAITING,
        )
    return await release(engine, pool, [(r["owner"], r["concurrency_key"]) for r in rows])


async def enqueue_if_released(engine: AsyncEngine, pool: ArqRedis, task_id: uuid.UUID) -> None:
    """Enqueue the task if it is ready (QUEUED, released, due) and Redis lacks its job."""
    async with transaction(engine) as conn:
        row = await conn.fetchrow(
            "SELECT id, type, priority, queue FROM task WHERE id = $1 AND status = 'QUEUED' "
            "AND waiting IS NULL AND due_at IS NULL",
            task_id,
        )
    if row is None:
        return
    job = queue.Job(row["type"], row["id"], row["priority"], row["queue"], True)
    await queue.enqueue(pool, await queue.missing(pool, [job]))
