"""cancelTask and retryTask: a client's changes to a task it submitted, each a conditional
transition (transitions.py) recorded by the journal, then the queue and the workers told."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from arq import ArqRedis
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import journal, queue, transitions
from taskrunner.errors import Conflict
from taskrunner.events import CANCEL_CHANNEL, cancel_message
from taskrunner.models import TaskRecord
from taskrunner.queries import require
from taskrunner.states import TERMINAL, TaskStatus

# A test seam: when set, `cancel` awaits it between reading the task and writing the
# cancellation, so a test can start the task in that window (tests/workers/test_cancel_race.py).
before_cancel_write: Callable[[uuid.UUID, TaskStatus], Awaitable[None]] | None = None


async def cancel(
    *, engine: AsyncEngine, redis: Redis, pool: ArqRedis, task_id: uuid.UUID, owner: str | None
) -> TaskRecord:
    """QUEUED: CANCELLED at once, and it never runs. RUNNING: flag it and tell the workers;
    the one running it cancels the coroutine, which ends CANCELLED. Finished: CONFLICT.

    The write is conditional on the status read: a task a worker started after the read
    is not CANCELLED under its running body (CANCEL_QUEUED is QUEUED-only); it is read
    again and cancelled as a running task."""
    for _ in range(journal.MAX_TRANSACTION_RUNS):
        task = await require(engine=engine, task_id=task_id, owner=owner)
        status = TaskStatus(task.status)
        if status in TERMINAL:
            raise Conflict(
                f"task {task_id} is already {status.value}; only QUEUED or RUNNING tasks can be "
                "cancelled (retryTask runs a finished task again)"
            )
        if status is TaskStatus.RUNNING and task.cancel_requested:
            await redis.publish(CANCEL_CHANNEL, cancel_message(task_id, task.attempts))
            return task
        if before_cancel_write is not None:
            await before_cancel_write(task_id, status)
        if status is TaskStatus.QUEUED:
            change = transitions.cancelled_while_queued(task_id)
        else:  # the attempt read: the cancel message names that one
            change = transitions.cancel_requested(task_id, task.attempts)
        outcome = await journal.apply_one(engine, redis, change)
        if outcome.accepted:
            if status is TaskStatus.QUEUED:
                await queue.remove(pool, task_id, task.queue)
            else:
                await redis.publish(CANCEL_CHANNEL, cancel_message(task_id, task.attempts))
            return await require(engine=engine, task_id=task_id, owner=owner)
    raise Conflict(f"task {task_id} kept changing state; try cancelTask again")


async def retry(
    *, engine: AsyncEngine, redis: Redis, pool: ArqRedis, task_id: uuid.UUID, owner: str | None
) -> TaskRecord:
    """Run a FAILED or CANCELLED task again, as a new attempt (its history stays)."""
    task = await require(engine=engine, task_id=task_id, owner=owner)
    outcome = await journal.apply_one(engine, redis, transitions.retried(task_id))
    if not outcome.accepted:
        found = outcome.found.value if outcome.found else "gone"
        raise Conflict(f"task {task_id} is {found}; only FAILED or CANCELLED tasks can be retried")
    await queue.enqueue(pool, [queue.job_of(task)])
    return await require(engine=engine, task_id=task_id, owner=owner)
