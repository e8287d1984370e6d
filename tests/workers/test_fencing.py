"""Fencing: a worker whose attempt moved on stops its body, a worker that cannot heartbeat
takes no new task, and a worker seen again is no longer suspected of having died. Real
worker, PostgreSQL and Redis; the "other" worker or reconciler is played through the same
functions a worker uses (heartbeats.beat, reconciler.recover_orphans, the reconcile lock)."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from arq import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import actors, heartbeats, journal, reconciler, submissions
from taskrunner.changes import NEXT_ATTEMPT, Change, Sql
from taskrunner.config import Settings
from taskrunner.events import EventKind
from taskrunner.models import task_table
from taskrunner.states import TaskStatus
from taskrunner.submissions import Submission
from tests.support.body_probe import BodyProbe
from tests.support.rows import new_task
from tests.support.servers import run_worker
from tests.support.waiting import eventually
from workers.background import RECONCILE_LOCK


async def _submit(
    engine: AsyncEngine, pool: ArqRedis, task: dict[str, Any], max_retries: int = 0
) -> uuid.UUID:
    ((name, data),) = task.items()
    (row,) = await submissions.submit(
        engine=engine,
        redis=pool,
        pool=pool,
        owner="tester",
        submissions=[Submission(name, data, 60, max_retries=max_retries)],
        actor=actors.key("tester", "tester"),
    )
    return row.id


async def _row(engine: AsyncEngine, task_id: uuid.UUID) -> Any:
    t = task_table.c
    query = sa.select(
        t.id, t.type, t.priority, t.attempts, t.max_retries, t.cancel_requested, t.worker_id,
        t.status, t.error_code,
    ).where(t.id == task_id)  # fmt: skip
    async with engine.connect() as conn:
        return (await conn.execute(query)).one()


async def _statuses(engine: AsyncEngine, task_id: uuid.UUID) -> list[str]:
    async with engine.connect() as conn:
        return list(
            await conn.scalars(
                sa.text(
                    "SELECT data->>'status' FROM task_event WHERE task_id = :t "
                    "AND kind = 'status' ORDER BY seq"
                ),
                {"t": task_id},
            )
        )


@pytest.mark.parametrize("max_retries", [0, 1])
async def test_a_refused_write_cancels_the_body_at_once(
    settings: Settings, engine: AsyncEngine, pool: ArqRedis, max_retries: int
) -> None:
    """Another worker's reconciler took this worker for lost and recovered its attempt
    (failed it, or queued it again: this worker then starts attempt 2 itself). The body of
    attempt 1 reports progress every second: its next write is refused, and it stops."""
    probe = BodyProbe()
    async with run_worker(settings, functions=[probe.job()]) as worker:
        task_id = await _submit(engine, pool, {"sleep": {"seconds": 30}}, max_retries)
        await probe.wait(lambda: probe.bodies_of(task_id) == [1], within=10)
        row = await _row(engine, task_id)
        assert await reconciler.recover_orphans(engine, pool, [row]) == 1

        await probe.wait(lambda: 1 not in probe.bodies_of(task_id), within=2.5)
        await asyncio.sleep(0.3)  # what the fenced attempt would still write
        after = await _row(engine, task_id)
        if max_retries == 0:
            assert (after.status, after.error_code) == ("FAILED", "WORKER_LOST")
            assert await _statuses(engine, task_id) == ["QUEUED", "RUNNING", "FAILED"]
        else:  # attempt 2 runs on, and this worker still says it runs it
            assert probe.bodies_of(task_id) == [2]
            assert (after.status, after.attempts) == ("RUNNING", 2)
            running = worker.ctx["running"].get(task_id)
            assert running is not None and running.attempt == 2
            assert await _statuses(engine, task_id) == ["QUEUED", "RUNNING", "QUEUED", "RUNNING"]
    assert probe.most <= 2


async def test_a_worker_that_cannot_heartbeat_takes_no_new_task(
    settings: Settings, engine: AsyncEngine, pool: ArqRedis
) -> None:
    """Redis refuses the heartbeat (the workers set is made a string: every SADD fails
    with WRONGTYPE). Others will soon take this worker for dead and recover what it runs,
    so it must not start anything new; once a heartbeat is written again, it does."""
    async with run_worker(settings) as worker:

        async def registered() -> bool:
            """the worker's heartbeat is in Redis"""
            return bool(await pool.scard(heartbeats.WORKERS_SET))  # type: ignore[misc]

        async def failing() -> bool:
            """a heartbeat failed, and the worker knows it"""
            return not worker.ctx["pulse"].healthy()

        await eventually(registered, within=10)
        await pool.delete(heartbeats.WORKERS_SET)
        await pool.set(heartbeats.WORKERS_SET, "not a set")
        await eventually(failing, within=10)

        task_id = await _submit(engine, pool, {"echo": {"message": "wait"}})
        for _ in range(15):
            await asyncio.sleep(0.1)
            assert (await _row(engine, task_id)).status == "QUEUED"

        await pool.delete(heartbeats.WORKERS_SET)  # heartbeats succeed again

        async def done() -> bool:
            """the task ran once the worker could beat again"""
            return bool((await _row(engine, task_id)).status == "SUCCEEDED")

        await eventually(done, within=10)


async def _start_as(engine: AsyncEngine, pool: ArqRedis, worker_id: str) -> uuid.UUID:
    """A task RUNNING on `worker_id` since a minute (long past any grace period); never
    enqueued, so no real worker takes it."""
    task_id = await new_task(engine, owner="tester", type="sleep", input={"seconds": 60})
    start = Change(
        task_id,
        EventKind.STATUS,
        {"status": TaskStatus.RUNNING.value},
        to=TaskStatus.RUNNING,
        values={
            "attempts": NEXT_ATTEMPT,
            "worker_id": worker_id,
            "started_at": Sql("clock_timestamp() - interval '1 minute'"),
        },
    )
    assert (await journal.apply_one(engine, pool, start)).accepted
    return task_id


async def test_a_suspect_worker_that_beats_again_is_no_longer_suspect(
    settings: Settings, engine: AsyncEngine, pool: ArqRedis
) -> None:
    """Worker w1 (played here) runs a task but its heartbeat is missing, so the reconciler
    of the real worker suspects it. w1 then beats again for longer than the grace period,
    while another worker holds the reconcile lock, and goes silent once more. Its task is
    recovered only a whole grace period after that, not at once on the old suspicion."""
    interval = settings.heartbeat_interval_seconds
    grace = interval * heartbeats.MISSED_BEATS
    task_id = await _start_as(engine, pool, "w1")
    info = heartbeats.WorkerInfo(
        id="w1",
        host=socket.gethostname(),
        pid=os.getpid(),
        started_at=datetime.now(UTC),
        last_heartbeat_at=datetime.now(UTC),
        running=[task_id],
    )
    async with run_worker(settings):
        await asyncio.sleep(grace * 0.6)  # reconcile rounds find the task orphaned
        assert (await _row(engine, task_id)).status == "RUNNING"

        await pool.set(RECONCILE_LOCK, "another-worker", px=60_000)
        for _ in range(int(grace * 1.2 / interval) + 1):  # w1 is seen again
            await heartbeats.beat(pool, info, interval)
            await asyncio.sleep(interval)
        await heartbeats.leave(pool, "w1")
        await pool.delete(RECONCILE_LOCK)

        for _ in range(int(grace * 0.6 / 0.1)):  # suspected afresh: not recovered yet
            await asyncio.sleep(0.1)
            row = await _row(engine, task_id)
            assert (row.status, row.worker_id) == ("RUNNING", "w1"), "recovered at once"

        async def recovered() -> bool:
            """the task was recovered once w1 had been silent for the grace period"""
            return bool((await _row(engine, task_id)).status == "FAILED")

        await eventually(recovered, within=grace + 3)
    row = await _row(engine, task_id)
    assert row.error_code == "WORKER_LOST"
