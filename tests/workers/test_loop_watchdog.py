"""The event-loop watchdog (workers.loopwatch) and the heartbeat thread: an async body that
blocks the loop is reported with its task id and how long it blocked, counted in the
worker's metrics, and the worker's heartbeats go on meanwhile, so it is not taken for
dead."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from taskrunner import heartbeats
from taskrunner.config import Settings
from taskrunner.embedded import free_port
from tests.support.environment import task_package
from tests.support.processes import api_process, worker_process
from tests.support.stack import Stack
from tests.support.tasks import ended, submit
from tests.support.waiting import eventually
from workers.loopwatch import LoopWatch

BLOCKER = '''
"""Block the event loop with time.sleep (what a process task is for)."""

import time

from pydantic import BaseModel

NAME = "blocker"


class Input(BaseModel):
    seconds: float


async def run(ctx, input: Input) -> dict:
    time.sleep(input.seconds)
    return {"blocked": input.seconds}
'''
TASK = "query($id: ID!) { task(id: $id) { status attempts error { code } } }"


async def test_a_blocking_async_body_is_reported_and_the_worker_stays_alive(
    settings: Settings, tmp_path: Path
) -> None:
    """A body blocks its worker's loop for 3 s. Beats every 0.2 s: silent for 1 s (5 beats)
    the worker is dead, and a task running over 1 s that no live worker lists is recovered
    by the other worker's reconciler once suspected for 1 s more, ~2.3 s into the block."""
    extra = task_package(tmp_path, "my_blockers", {"blocker": BLOCKER})
    port = free_port()
    extra |= {
        "HEARTBEAT_INTERVAL_SECONDS": "0.2",
        "RECONCILE_INTERVAL_SECONDS": "0.25",
        "LOG_FORMAT": "json",
    }
    log = tmp_path / "worker.log"
    redis = Redis.from_url(settings.require_redis_url())
    try:
        async with (
            worker_process(settings, log, WORKER_METRICS_PORT=str(port), **extra),
            # serves another queue: takes none of the tasks, reconciles while the first blocks
            worker_process(settings, WORKER_QUEUES="elsewhere", WORKER_METRICS_PORT="0", **extra),
            api_process(settings, tmp_path / "api.log", **extra) as url,
        ):
            stack = await Stack.keyed(url, settings)

            async def two_workers() -> bool:
                """both workers beat"""
                return len(await heartbeats.live_workers(redis)) == 2

            await eventually(two_workers, within=20)
            task_id = await submit(stack, {"blocker": {"seconds": 3}})
            alive_throughout = True
            began = time.monotonic()
            while time.monotonic() - began < 4.0:  # the block and a bit: never declared dead
                alive_throughout &= len(await heartbeats.live_workers(redis)) == 2
                await asyncio.sleep(0.1)
            found = await ended(stack, TASK, task_id, within=15)
            async with httpx.AsyncClient() as client:
                scraped = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    finally:
        await redis.aclose()
    # not recovered under its worker (it would run again, or fail WORKER_LOST)
    assert found == {"status": "SUCCEEDED", "attempts": 1, "error": None}, found
    assert alive_throughout, "the worker's heartbeat expired while its loop was blocked"
    blocks = [
        json.loads(line) for line in log.read_text().splitlines() if '"event_loop_blocked"' in line
    ]
    assert [(b["task_id"], b["level"]) for b in blocks] == [(task_id, "warning")], blocks
    assert 2.5 <= blocks[0]["blocked_seconds"] <= 4.0, blocks
    assert 'taskrunner_event_loop_blocked_total{culprit="task"} 1.0' in scraped
    assert "taskrunner_event_loop_blocked_seconds_count 1.0" in scraped


async def test_the_watchdog_names_the_blocking_task_and_ignores_a_loop_that_yields() -> None:
    watch = LoopWatch(asyncio.get_running_loop(), warn_seconds=0.2)
    watch.start()
    ticker = asyncio.create_task(watch.tick())
    try:
        await asyncio.sleep(0.2)

        async def polite() -> None:
            for _ in range(10):
                await asyncio.sleep(0.05)

        await asyncio.create_task(polite(), name="task:polite")
        await asyncio.sleep(0.2)
        assert watch.blocks == 0

        async def rude() -> None:
            time.sleep(0.6)  # noqa: ASYNC251  (the point: a body that blocks)

        await asyncio.create_task(rude(), name="task:1234")
        await asyncio.sleep(0.3)  # the loop turns: the thread sees the block is over
        assert watch.blocks == 1
        assert watch.last is not None
        who, seconds = watch.last
        assert who == {"task_id": "1234"}
        assert seconds == pytest.approx(0.6, abs=0.15)
    finally:
        ticker.cancel()
        watch.stop()


async def test_a_block_that_ends_unseen_before_another_is_still_reported() -> None:
    """The watchdog thread was late (the machine busy): the loop turned once and blocked
    again before it looked. Both blocks are reported, the first when the second is seen.
    The loop's tick is set by hand here, as the loop side would have stamped it."""
    watch = LoopWatch(asyncio.get_running_loop(), warn_seconds=0.2)
    first = time.monotonic() - 5.0
    watch.last_tick = first  # blocked for 5 s so far
    watch.start()
    try:
        await asyncio.sleep(0.3)
        assert watch.blocks == 0  # still blocked: reported when it ends
        watch.last_tick = first + 4.0  # it turned 1 s ago, then blocked again
        await asyncio.sleep(0.3)
        assert watch.blocks == 1
        assert watch.last is not None
        who, seconds = watch.last
        assert "task_id" not in who  # no task body held the loop: the worker's count
        assert seconds == pytest.approx(4.0, abs=0.1)
    finally:
        watch.stop()
