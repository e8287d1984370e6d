"""cancelTasks drops the cancelled tasks' jobs from Redis, as cancelTask does: their queue
entries and job keys go (none is left to expire a week later), on each task's own queue;
a task a worker took meanwhile keeps its job."""

from __future__ import annotations

import uuid

from arq import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import actors, control, queue
from taskrunner.queries import TaskCriteria
from taskrunner.submissions import Submission, submit

T = actors.key("tester", "tester")  # the actor of the changes these tests make


async def test_cancel_many_drops_the_jobs_of_the_tasks_it_cancels(
    engine: AsyncEngine, pool: ArqRedis
) -> None:
    label = f"bulk-{uuid.uuid4().hex[:6]}"
    subs = [
        Submission("echo", {"message": str(i)}, 60, labels=(label,), queue=q)
        for i, q in enumerate(["default", "other", "default"])
    ]
    tasks = await submit(
        engine=engine, redis=pool, pool=pool, owner="bulk", submissions=subs, actor=T
    )
    for t in tasks:
        assert await pool.exists(job_key_prefix + str(t.id))
    taken = tasks[2]  # a worker claimed it just before the cancel: its job stays
    await pool.set(in_progress_key_prefix + str(taken.id), b"1", px=60_000)
    cancelled = await control.cancel_many(
        engine=engine,
        redis=pool,
        pool=pool,
        owner="bulk",
        filter=TaskCriteria(label=label),
        most=10,
        actor=T,
    )
    assert cancelled == 3
    for t in tasks[:2]:
        assert not await pool.exists(job_key_prefix + str(t.id))
        assert await pool.zscore(queue.key(pool.default_queue_name, t.queue), str(t.id)) is None
    assert await pool.exists(job_key_prefix + str(taken.id))
    await pool.delete(in_progress_key_prefix + str(taken.id))
