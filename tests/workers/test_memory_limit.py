"""TASK_MAX_MEMORY_MB: a task that makes its worker outgrow the budget ends FAILED with
LIMIT_EXCEEDED, and the worker goes on serving other tasks.

The watchdog's attribution is checked with a fake RSS; then a real api and worker (in
processes of their own, so that the worker's RSS is its own) run `memoryHog`
(tests/support/memtasks), a task type that allocates 1 MiB at a time and keeps it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from datetime import datetime
from typing import Any, TypeVar

import psutil
import pytest

from taskrunner.config import Settings
from tests.support.bounds import unbounded_fields
from tests.support.environment import repo_root
from tests.support.memtasks import hog
from tests.support.processes import api_process, worker_process
from tests.support.stack import Stack
from tests.support.tasks import finish, submit, task_of
from tests.support.waiting import eventually
from workers.memory import MB, MemoryWatchdog, process_rss
from workers.worker_context import Running

T = TypeVar("T")

# --- the watchdog alone: who is blamed, and what happens after a kill -------------------


class FakeMemory:
    """An RSS that tasks move by hand, in MB."""

    def __init__(self, mb: int) -> None:
        self.mb = mb
        self.released = 0

    def rss(self) -> int:
        return self.mb * MB

    def release(self) -> None:
        self.released += 1


class Worker:
    """A watchdog over fake memory, with bodies that grow it by the MB they are given."""

    def __init__(self, mb: int = 50) -> None:
        self.memory = FakeMemory(mb)
        self.running: dict[uuid.UUID, Running] = {}
        self.watchdog = MemoryWatchdog(self.running, 100, self.memory.rss, self.memory.release)
        self.bodies: list[asyncio.Task[Any]] = []

    async def start(self, grow_mb: int = 0) -> uuid.UUID:
        """A task that grows the memory by `grow_mb` in its first step, then waits."""

        async def body() -> None:
            self.memory.mb += grow_mb
            await asyncio.sleep(3600)

        task_id = uuid.uuid4()
        task = asyncio.create_task(_await(self.watchdog.metered(task_id, body())))
        self.bodies.append(task)
        self.running[task_id] = Running(1, task)
        self.watchdog.started(task_id)
        await asyncio.sleep(0)  # its first step
        return task_id

    async def end(self, task_id: uuid.UUID) -> str | None:
        """What the runner does when the body has ended."""
        body = self.running.pop(task_id).body
        await asyncio.gather(body, return_exceptions=True)
        return self.watchdog.finished(task_id)

    async def close(self) -> None:
        for body in self.bodies:
            body.cancel()
        await asyncio.gather(*self.bodies, return_exceptions=True)


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


@pytest.fixture
async def worker() -> AsyncIterator[Worker]:
    made = Worker()
    yield made
    await made.close()


async def test_within_the_budget_nobody_is_blamed(worker: Worker) -> None:
    await worker.start(grow_mb=100)  # exactly baseline + budget
    assert await worker.watchdog.check() is None
    assert worker.memory.released == 0


async def test_the_task_that_grew_is_blamed_not_the_one_that_started_first(
    worker: Worker,
) -> None:
    sleeper = await worker.start()  # running all along, adding nothing
    hog_id = await worker.start(grow_mb=120)
    late = await worker.start(grow_mb=10)
    worker.memory.mb += 5  # the worker's own (not in any task's steps)
    assert worker.watchdog.grown(hog_id) == 120 * MB
    assert worker.watchdog.grown(sleeper) == 0
    assert await worker.watchdog.check() == hog_id
    await asyncio.sleep(0)
    assert worker.running[hog_id].body.cancelled()
    assert not any(worker.running[t].body.done() for t in (sleeper, late))
    assert await worker.end(hog_id) == (
        "exceeded TASK_MAX_MEMORY_MB (100 MB): its worker grew 135 MB above its baseline, "
        "120 MB of it in this task"
    )
    assert worker.watchdog.finished(hog_id) is None  # reported once
    worker.memory.mb = 100  # the allocator kept some of it
    assert await worker.watchdog.check() is None  # reclaims instead of blaming another task
    assert worker.memory.released == 1
    assert worker.watchdog.baseline == 100 * MB
    assert await worker.watchdog.check() is None  # nothing more to do
    assert worker.memory.released == 1


async def test_a_tie_blames_the_latest_to_start(worker: Worker) -> None:
    await worker.start(grow_mb=60)
    latest = await worker.start(grow_mb=60)
    assert await worker.watchdog.check() == latest


async def test_no_second_kill_before_the_first_task_has_ended(worker: Worker) -> None:
    first = await worker.start(grow_mb=90)
    second = await worker.start(grow_mb=100)
    assert await worker.watchdog.check() == second
    worker.memory.mb += 300
    assert await worker.watchdog.check() is None  # still ending: nobody else is blamed
    await asyncio.sleep(0)
    assert worker.running[second].body.done()
    assert await worker.watchdog.check() is None  # the runner has not finished it yet
    assert worker.memory.released == 0
    await worker.end(second)
    assert await worker.watchdog.check() is None  # now it reclaims and re-baselines
    assert worker.memory.released == 1
    assert worker.watchdog.baseline == worker.memory.mb * MB
    assert not worker.running[first].body.done()


async def test_a_task_that_ignores_the_cancellation_is_cancelled_again(worker: Worker) -> None:
    cancels = 0

    async def stubborn() -> None:
        nonlocal cancels
        worker.memory.mb += 200
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancels += 1
                if cancels == 2:
                    raise

    task_id = uuid.uuid4()
    body = asyncio.create_task(_await(worker.watchdog.metered(task_id, stubborn())))
    worker.bodies.append(body)
    worker.running[task_id] = Running(1, body)
    worker.watchdog.started(task_id)
    await asyncio.sleep(0)
    assert await worker.watchdog.check() == task_id
    await asyncio.sleep(0)
    assert cancels == 1 and not body.done()
    assert await worker.watchdog.check() is None
    await asyncio.sleep(0)
    assert cancels == 2 and body.cancelled()


async def test_over_budget_with_no_task_growing_re_baselines(worker: Worker) -> None:
    worker.memory.mb = 300  # kept from a task that has finished
    await worker.start()
    assert await worker.watchdog.check() is None
    assert worker.memory.released == 1 and worker.watchdog.baseline == 300 * MB


async def test_metering_counts_each_task_s_own_steps_and_passes_outcomes_through(
    worker: Worker,
) -> None:
    watchdog, memory = worker.watchdog, worker.memory

    async def grow(mb: int, steps: int) -> int:
        for _ in range(steps):
            memory.mb += mb
            await asyncio.sleep(0)
        return mb * steps

    async def fail() -> None:
        await asyncio.sleep(0)
        raise ValueError("from the task")

    a, b = uuid.uuid4(), uuid.uuid4()
    watchdog.started(a)
    watchdog.started(b)
    results = await asyncio.gather(  # their steps interleave
        _await(watchdog.metered(a, grow(3, 10))), _await(watchdog.metered(b, grow(1, 20)))
    )
    assert results == [30, 20]
    assert (watchdog.grown(a), watchdog.grown(b)) == (30 * MB, 20 * MB)
    with pytest.raises(ValueError, match="from the task"):
        await watchdog.metered(a, fail())
    assert watchdog.finished(a) is None and watchdog.grown(a) == 0


def test_process_rss_is_what_psutil_reports() -> None:
    assert abs(process_rss() - psutil.Process().memory_info().rss) < 4 * MB


def test_the_hog_input_is_bounded_too() -> None:
    assert unbounded_fields(hog.NAME, hog.Input) == []


# --- a real worker ------------------------------------------------------------------------

BUDGET_MB = 100


def hog_env() -> dict[str, str]:
    """For the api and the worker: memoryHog registered, a small budget, frequent checks."""
    return {
        "PYTHONPATH": os.pathsep.join(
            [str(repo_root()), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
        "TASKRUNNER_TASK_MODULES": "tests.support.memtasks",
        "TASK_MAX_MEMORY_MB": str(BUDGET_MB),
        "MEMORY_CHECK_INTERVAL_SECONDS": "0.1",
        "WORKER_CONCURRENCY": "4",
    }


@contextlib.asynccontextmanager
async def hog_stack(settings: Settings) -> AsyncIterator[tuple[Stack, int]]:
    """A real api and worker in processes of their own; yields the stack and the worker's
    pid."""
    async with (
        worker_process(settings, **hog_env()) as worker,  # starting while the api does
        api_process(settings, **hog_env()) as url,
    ):
        yield await Stack.keyed(url, settings), worker.pid
        assert worker.returncode is None, "the worker exited"


async def run_to_end(stack: Stack, task: dict[str, Any], **options: Any) -> dict[str, Any]:
    task_id = await submit(stack, task, **options)
    events = await finish(stack, task_id, within=60)
    return {"id": task_id, "events": events, **(await task_of(stack, task_id))}


async def test_a_task_over_the_budget_fails_and_the_worker_goes_on(settings: Settings) -> None:
    peak = 0
    async with hog_stack(settings) as (stack, pid):
        rss = psutil.Process(pid).memory_info
        warm = await run_to_end(stack, {"echo": {"message": "warm up"}})
        assert warm["status"] == "SUCCEEDED"
        small = await run_to_end(stack, {"memoryHog": {"megabytes": 20}})
        assert small["status"] == "SUCCEEDED", small  # within the budget: left alone

        baseline = rss().rss

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, rss().rss)
                await asyncio.sleep(0.01)

        sampler = asyncio.create_task(sample())
        sleeper = await submit(stack, {"sleep": {"seconds": 4}})  # running all along
        began = time.monotonic()
        hog_task = await run_to_end(stack, {"memoryHog": {"megabytes": 400}}, maxRetries=2)
        took = time.monotonic() - began
        sampler.cancel()
        slept = (await finish(stack, sleeper))[-1]

        async def released() -> bool:
            """the worker gave the hog's memory back"""
            return rss().rss < baseline + 60 * MB

        await eventually(released, 10)
        after = await run_to_end(stack, {"echo": {"message": "still here"}})
        workers = (await stack.execute("{ workers { pid } }"))["workers"]

    assert hog_task["status"] == "FAILED", hog_task
    assert hog_task["attempts"] == 1  # not retried, although maxRetries allowed it
    error = hog_task["error"]
    assert error["code"] == "LIMIT_EXCEEDED"
    assert error["message"].startswith(f"exceeded TASK_MAX_MEMORY_MB ({BUDGET_MB} MB): ")
    lines = [e["line"] for e in hog_task["events"] if e.get("line")]
    assert f"task_killed: {error['message']}" in lines
    statuses = [e["status"] for e in hog_task["events"] if e.get("status")]
    assert statuses == ["QUEUED", "RUNNING", "FAILED"]
    ran = datetime.fromisoformat(hog_task["finishedAt"]) - datetime.fromisoformat(
        hog_task["startedAt"]
    )
    assert ran.total_seconds() < 4, ran  # allocating 400 MiB takes at least 4 s
    assert took < 15, took
    growth_mb = (peak - baseline) / MB
    assert growth_mb < 250, growth_mb

    assert slept["status"] == "SUCCEEDED", slept  # the hog was blamed, not the older task
    assert after["status"] == "SUCCEEDED" and after["result"] == {"message": "still here"}
    assert workers == [{"pid": pid}]  # the same worker, never restarted
