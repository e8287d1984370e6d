"""The one module that knows arq: job ids, enqueueing, removal. arq only delivers;
PostgreSQL decides (a worker re-reads the row before it runs anything)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from arq import ArqRedis, create_pool
from arq.connections import RedisSettings
from arq.constants import in_progress_key_prefix, job_key_prefix


@dataclass(frozen=True)
class Job:
    """A task to deliver: the arq function is the task type, the only argument the id."""

    task_type: str
    task_id: uuid.UUID
    not_before: datetime | None = None


def redis_settings(redis_url: str) -> RedisSettings:
    return RedisSettings.from_dsn(redis_url)


async def connect(redis_url: str, queue_name: str) -> ArqRedis:
    """An arq pool (a redis-py client) whose default queue is `queue_name`."""
    pool: ArqRedis = await create_pool(redis_settings(redis_url), default_queue_name=queue_name)
    return pool


async def enqueue(pool: ArqRedis, jobs: Sequence[Job]) -> None:
    """Enqueue with `_job_id` = task id, so a repeated enqueue of a waiting job is a no-op."""
    await asyncio.gather(
        *(
            pool.enqueue_job(
                job.task_type,
                str(job.task_id),
                _job_id=str(job.task_id),
                _defer_until=job.not_before,
            )
            for job in jobs
        )
    )


async def remove(pool: ArqRedis, task_id: uuid.UUID) -> None:
    """Drop a waiting job (a cancelled task). A worker that already took it re-reads the
    row and skips it, so losing this race is harmless."""
    job_id = str(task_id)
    if await pool.exists(in_progress_key_prefix + job_id):
        return
    pipe = pool.pipeline(transaction=True)
    pipe.zrem(pool.default_queue_name, job_id)
    pipe.delete(job_key_prefix + job_id)
    await pipe.execute()
