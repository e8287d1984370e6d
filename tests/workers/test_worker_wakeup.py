"""`taskrunner worker` (TaskWorker): woken up by enqueues, claims jobs in batches, and
costs next to nothing while idle."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import sqlalchemy as sa
from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import queue
from taskrunner.config import Settings
from tests.support.processes import worker_process
from tests.support.rows import status_counts, wait_for
from tests.support.servers import run_worker
from tests.support.stack import Stack
from tests.support.tasks import BATCH
from tests.support.waiting import eventually
from workers.settings import TaskWorker


async def test_an_enqueue_wakes_an_idle_worker_at_once(api: Stack, engine: AsyncEngine) -> None:
    """With a 30 s idle poll, only the wake-up can start a task quickly: each of five tasks
    submitted one by one to an idle worker starts within 0.5 s of its creation."""
    settings = api.settings.model_copy(update={"worker_idle_poll_seconds": 30.0})
    async with run_worker(settings) as worker:

        async def listening() -> bool:
            """the worker has polled once and listens for wake-ups"""
            return await wake_listeners(settings) >= 1

        async def idle() -> bool:
            """the worker runs nothing: it waits for a wake-up"""
            return worker.job_counter == 0

        await eventually(listening, 10)
        assert worker.idle_poll_seconds == 30.0
        for n in range(5):
            await api.execute(BATCH, t=[{"task": {"echo": {"message": str(n)}}}])
            await wait_for(engine, "SELECT count(*) FROM task WHERE status = 'SUCCEEDED'", n + 1)
            await eventually(idle, 5)
    async with engine.connect() as conn:
        waits = (
            await conn.scalars(
                sa.text("SELECT extract(epoch FROM started_at - created_at) FROM task")
            )
        ).all()
    assert len(waits) == 5 and max(float(w) for w in waits) < 0.5, waits


async def test_a_batch_is_claimed_up_to_the_free_slots_and_each_task_runs_once(
    api: Stack, engine: AsyncEngine
) -> None:
    """200 tasks, two workers of 30 slots each claiming in batches: every task succeeds
    exactly once and neither worker ever runs more than its slots."""
    batch = [{"task": {"sleep": {"seconds": 0.05}}} for _ in range(100)]
    await api.execute(BATCH, t=batch)
    await api.execute(BATCH, t=batch)
    peaks = [0, 0]

    async def watch(worker: TaskWorker, index: int) -> None:
        while True:
            peaks[index] = max(peaks[index], worker.job_counter)
            await asyncio.sleep(0.005)

    async with (
        run_worker(api.settings, max_jobs=30) as one,
        run_worker(api.settings, max_jobs=30) as two,
    ):
        watchers = [asyncio.create_task(watch(w, i)) for i, w in enumerate((one, two))]
        try:
            await wait_for(
                engine, "SELECT count(*) FROM task WHERE status = 'SUCCEEDED'", 200, within=60
            )
        finally:
            for watcher in watchers:
                watcher.cancel()
    assert await status_counts(engine) == {"SUCCEEDED": 200}
    async with engine.connect() as conn:
        starts = await conn.scalar(
            sa.text("SELECT count(*) FROM task_event WHERE data->>'status' = 'RUNNING'")
        )
    assert starts == 200  # no task started twice
    assert 0 < peaks[0] <= 30 and 0 < peaks[1] <= 30, peaks


async def wake_listeners(settings: Settings) -> int:
    """How many workers listen on the queue's wake-up channel."""
    redis = Redis.from_url(settings.require_redis_url())
    try:
        ((_, listeners),) = await redis.pubsub_numsub(queue.wake_channel(settings.queue_name))
        return int(listeners)
    finally:
        await redis.aclose()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_an_idle_worker_uses_under_two_percent_of_a_core(
    settings: Settings, engine: AsyncEngine
) -> None:
    """`taskrunner worker` with the default idle poll, its heartbeat, cancel watcher and
    reconciler running: over 6 s with nothing to do it uses < 2% of one core."""
    async with worker_process(
        settings,
        WORKER_IDLE_POLL_SECONDS="1.0",
        HEARTBEAT_INTERVAL_SECONDS="2.0",
        RECONCILE_INTERVAL_SECONDS="5.0",
        SCHEDULER_INTERVAL_SECONDS="1.0",
        STREAM_QUIET_SECONDS="3.0",
    ) as proc:
        last: float | None = None

        async def settled() -> bool:
            """the worker started up (imports, connections): under 10% of a core in 0.5 s"""
            nonlocal last
            cpu = _cpu_seconds(proc.pid)
            quiet, last = last is not None and cpu - last < 0.05, cpu
            return quiet

        await eventually(settled, 30, step=0.5)
        assert proc.returncode is None
        cpu, wall = _cpu_seconds(proc.pid), time.monotonic()
        await asyncio.sleep(6)  # the window measured: the idle poll, heartbeats, a reconcile
        share = (_cpu_seconds(proc.pid) - cpu) / (time.monotonic() - wall)
    assert share < 0.02, f"{share:.2%}"


async def test_a_backlog_drains_without_waiting_for_the_idle_poll(
    api: Stack, engine: AsyncEngine
) -> None:
    """300 tasks queued for 10 slots with a 30 s idle poll: each ending job makes the worker
    take the next ones, so the backlog drains in seconds, never waiting for the poll."""
    batch = [{"task": {"sleep": {"seconds": 0.01}}} for _ in range(100)]
    for _ in range(3):
        await api.execute(BATCH, t=batch)
    settings = api.settings.model_copy(update={"worker_idle_poll_seconds": 30.0})
    async with run_worker(settings, max_jobs=10):
        await wait_for(
            engine, "SELECT count(*) FROM task WHERE status = 'SUCCEEDED'", 300, within=25
        )


async def test_a_poll_reads_past_jobs_other_workers_run(api: Stack, engine: AsyncEngine) -> None:
    """The oldest 250 of 300 queued jobs look taken by other workers (their in-progress keys
    are set, as a running worker's would be); this worker still finds and runs the other
    50 at once (a single read of the queue's head would see only taken jobs)."""
    batch = [{"task": {"echo": {"message": str(n)}}} for n in range(100)]
    for _ in range(3):
        await api.execute(BATCH, t=batch)
    redis = Redis.from_url(api.settings.require_redis_url())
    try:
        head = await redis.zrange(api.settings.queue_name, 0, 249)
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in head:
                pipe.set(in_progress_key_prefix + job_id.decode(), b"1", px=60_000)
            await pipe.execute()
    finally:
        await redis.aclose()
    settings = api.settings.model_copy(update={"worker_idle_poll_seconds": 30.0})
    async with run_worker(settings, max_jobs=10) as worker:
        await wait_for(
            engine, "SELECT count(*) FROM task WHERE status = 'SUCCEEDED'", 50, within=10
        )

        async def idle() -> bool:
            """the worker runs nothing: the other 250 are not for it"""
            return worker.job_counter == 0

        await eventually(idle, 5)
    assert await status_counts(engine) == {"SUCCEEDED": 50, "QUEUED": 250}
