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
from tests.support.tasks import submit
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
    extra = task_package(tmp_path, "my_blockers", {"blocker": BLOCKER})
    port = free_port()
    # beats every 0.4 s: silent for 2 s (5 beats), the worker would be dead mid-block
    extra |= {
        "HEARTBEAT_INTERVAL_SECONDS": "0.4",
        "WORKER_METRICS_PORT": str(port),
        "LOG_FORMAT": "json",
    }
    log = tmp_path / "worker.log"
    redis = Redis.from_url(settings.require_redis_url())
    try:
        async with (
            worker_process(settings, log, **extra),
            api_process(settings, tmp_path / "api.log", **extra) as url,
        ):
            stack = await Stack.keyed(url, settings)

            async def one_worker() -> bool:
                """the worker beats"""
                return len(await heartbeats.live_workers(redis)) == 1

            await eventually(one_worker, within=15)
            task_id = await submit(stack, {"blocker": {"seconds": 3}})
            alive_throughout = True
            began = time.monotonic()
            while time.monotonic() - began < 4.0:  # the block and a bit: never declared dead
                alive_throughout &= len(await heartbeats.live_workers(redis)) == 1
                await asyncio.sleep(0.1)
            found: dict[str, object] = {}

            async def ended() -> bool:
                """the task ended"""
                found.update((await stack.execute(TASK, id=task_id))["task"])
                return found["status"] in ("SUCCEEDED", "FAILED")

            await eventually(ended, within=15)
            async with httpx.AsyncClient() as client:
                scraped = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    finally:
        await redis.aclose()
    assert alive_throughout, "the worker's heartbeat expired while its loop was blocked"
    assert (found["status"], found["attempts"]) == ("SUCCEEDED", 1), found
    blocks = [
        json.loads(line) for line in log.read_text().splitlines() if '"event_loop_blocked"' in line
    ]
    assert [b["task_id"] for b in blocks] == [task_id], blocks
    assert 2.5 <= blocks[0]["blocked_seconds"] <= 4.0, blocks
    assert 'taskrunner_event_loop_blocked_total{culprit="task"} 1.0' in scraped


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
