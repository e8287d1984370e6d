"""The one module that knows arq: job ids, scores, enqueueing, removal, re-delivery.

arq only delivers; PostgreSQL decides (a worker re-reads the row before it runs anything).
arq reads its queue, a Redis sorted set, in score order among members whose score is not
in the future. We give every job a score in the past that encodes its priority: a higher
priority is an older score, and within one priority the enqueue time keeps FIFO order.
Tasks that must wait (runAt, retry backoff) wait in PostgreSQL and are enqueued when due.

Named queues: each is its own sorted set, `<QUEUE_NAME>` for `default` and
`<QUEUE_NAME>:<name>` for the others, and workers read the sets of the queues they serve.
A paused queue has the key `<its set>:paused` (written from PostgreSQL's `queue_state`,
which decides); workers claim nothing from it meanwhile.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from arq import ArqRedis, create_pool
from arq.connections import RedisSettings
from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.jobs import serialize_job
from redis.asyncio.client import Pipeline

PRIORITY_MIN, PRIORITY_MAX = -1000, 1000
PRIORITY_STEP_MS = 10**11  # ~3 years: one priority level outranks any wait in the queue
JOB_EXPIRES_MS = 7 * 24 * 3600 * 1000  # a job still waiting after this is dropped by arq;
# the reconciler then enqueues it again from PostgreSQL


DEFAULT_QUEUE = "default"


@dataclass(frozen=True)
class Job:
    """A task to deliver: the arq function is the task type, its argument the id (and
    `limited`, for a task with a concurrency key: its start checks for a free slot)."""

    task_type: str
    task_id: uuid.UUID
    priority: int = 0
    queue: str = DEFAULT_QUEUE
    limited: bool = False
    # its place among jobs of its priority, in ms since the epoch (default: now, FIFO by
    # enqueue); a workflow step made ready keeps its workflow's, ahead of later submissions
    since_ms: int | None = None


def job_of(task: Any) -> Job:
    """The job of a task row (a TaskRecord, or a row with type, id, priority, queue and
    concurrency_key)."""
    return Job(
        task.type,
        task.id,
        task.priority,
        getattr(task, "queue", DEFAULT_QUEUE) or DEFAULT_QUEUE,
        getattr(task, "concurrency_key", None) is not None,
    )


def key(base: str, queue: str) -> str:
    """The Redis sorted set of the named `queue` (`base`: QUEUE_NAME, the default's)."""
    return base if queue == DEFAULT_QUEUE else f"{base}:{queue}"


def paused_key(queue_key: str) -> str:
    """Set while the queue is paused: workers claim nothing from it."""
    return f"{queue_key}:paused"


def score(priority: int, enqueued_ms: int) -> int:
    """The job's score: always <= now, lower for a higher priority (read first)."""
    return enqueued_ms - (priority - PRIORITY_MIN) * PRIORITY_STEP_MS


def redis_settings(redis_url: str) -> RedisSettings:
    return RedisSettings.from_dsn(redis_url)


async def connect(redis_url: str, queue_name: str) -> ArqRedis:
    """An arq pool (a redis-py client) whose default queue is `queue_name`."""
    pool: ArqRedis = await create_pool(redis_settings(redis_url), default_queue_name=queue_name)
    return pool


def wake_channel(queue_name: str) -> str:
    """Where enqueues announce themselves, so waiting workers poll at once."""
    return f"taskrunner:wake:{queue_name}"


async def enqueue(pool: ArqRedis, jobs: Sequence[Job]) -> None:
    """Enqueue jobs in one pipeline and wake the workers up. The job id is the task id and
    both writes are NX, so enqueueing a job that waits or runs already changes nothing."""
    if not jobs:
        return
    async with pool.pipeline(transaction=False) as pipe:
        add_enqueues(pipe, pool.default_queue_name, jobs)
        await pipe.execute()


def add_enqueues(pipe: Pipeline, base: str, jobs: Sequence[Job]) -> None:
    """Queue the commands of `enqueue` on a pipeline (`base`: the default queue's key)."""
    if not jobs:
        return
    now = int(time.time() * 1000)
    keys: dict[str, None] = {}
    for job in jobs:
        job_id = str(job.task_id)
        args: tuple[Any, ...] = (job_id, True) if job.limited else (job_id,)
        payload = serialize_job(job.task_type, args, {}, None, now)
        queue_key = key(base, job.queue)
        keys[queue_key] = None
        pipe.set(job_key_prefix + job_id, payload, px=JOB_EXPIRES_MS, nx=True)
        pipe.zadd(queue_key, {job_id: score(job.priority, job.since_ms or now)}, nx=True)
    for queue_key in keys:
        pipe.publish(wake_channel(queue_key), b"")


async def redeliver(pool: ArqRedis, jobs: Sequence[Job]) -> None:
    """Enqueue jobs whose worker died: drop arq's in-progress marks first (arq itself would
    wait for its job timeout), then enqueue as usual."""
    if not jobs:
        return
    await pool.delete(*(in_progress_key_prefix + str(job.task_id) for job in jobs))
    await pool.delete(*(job_key_prefix + str(job.task_id) for job in jobs))
    await enqueue(pool, jobs)


async def missing(pool: ArqRedis, jobs: Sequence[Job]) -> list[Job]:
    """The jobs that Redis does not hold (lost, flushed) on their queue."""
    if not jobs:
        return []
    async with pool.pipeline(transaction=False) as pipe:
        for job in jobs:
            pipe.exists(job_key_prefix + str(job.task_id))
            pipe.zscore(key(pool.default_queue_name, job.queue), str(job.task_id))
        found = await pipe.execute()
    return [job for i, job in enumerate(jobs) if not found[2 * i] or found[2 * i + 1] is None]


async def remove_many(pool: ArqRedis, tasks: Sequence[tuple[uuid.UUID, str]]) -> None:
    """`remove` for many (task id, queue) pairs, in two round trips."""
    if not tasks:
        return
    async with pool.pipeline(transaction=False) as pipe:
        for task_id, _ in tasks:
            pipe.exists(in_progress_key_prefix + str(task_id))
        taken = await pipe.execute()
    async with pool.pipeline(transaction=False) as pipe:
        for (task_id, queue), busy in zip(tasks, taken, strict=True):
            if not busy:
                pipe.zrem(key(pool.default_queue_name, queue), str(task_id))
                pipe.delete(job_key_prefix + str(task_id))
        await pipe.execute()


async def remove(pool: ArqRedis, task_id: uuid.UUID, queue: str = DEFAULT_QUEUE) -> None:
    """Drop a waiting job (a cancelled task). A worker that already took it re-reads the
    row and skips it, so losing this race is harmless."""
    job_id = str(task_id)
    if await pool.exists(in_progress_key_prefix + job_id):
        return
    async with pool.pipeline(transaction=True) as pipe:
        pipe.zrem(key(pool.default_queue_name, queue), job_id)
        pipe.delete(job_key_prefix + job_id)
        await pipe.execute()
