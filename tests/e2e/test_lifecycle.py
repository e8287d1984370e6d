"""The task lifecycle with real processes: retries, priorities, scheduling, idempotency,
graceful shutdown, and no lost task when a process or Redis fails."""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner.config import Settings
from taskrunner.embedded import free_port
from tests.support.environment import process_env
from tests.support.processes import spawn, stop, wait_ready, worker_process
from tests.support.rows import status_counts, wait_for
from tests.support.servers import run_api, run_worker
from tests.support.stack import Stack, make_key
from tests.support.tasks import BATCH, WATCH, finish, submit, task_log, task_of
from tests.support.waiting import eventually


async def test_failures_are_retried_with_growing_waits_until_success(stack: Stack) -> None:
    task_id = await submit(stack, {"fail": {"failTimes": 2}}, maxRetries=3)
    events = await finish(stack, task_id)
    statuses = [(e["status"], datetime.fromisoformat(e["at"])) for e in events if e.get("status")]
    assert [s for s, _ in statuses] == [
        "QUEUED", "RUNNING", "QUEUED", "RUNNING", "QUEUED", "RUNNING", "SUCCEEDED"
    ]  # fmt: skip
    waits = [
        (statuses[i + 1][1] - statuses[i][1]).total_seconds() for i in (2, 4)
    ]  # retry QUEUED -> next RUNNING
    assert 0.5 <= waits[0] < waits[1], waits
    task = await task_of(stack, task_id)
    assert task["status"] == "SUCCEEDED" and task["attempts"] == 3
    assert task["result"] == {"succeeded_on_attempt": 3}
    assert task["error"] is None


async def test_failures_beyond_max_retries_end_failed(stack: Stack) -> None:
    task_id = await submit(stack, {"fail": {"failTimes": 2}}, maxRetries=1)
    events = await finish(stack, task_id)
    assert events[-1]["status"] == "FAILED"
    task = await task_of(stack, task_id)
    assert task["attempts"] == 2 and task["error"]["code"] == "TASK_ERROR"
    retries = [e for e in events if e.get("status") == "QUEUED" and e.get("error")]
    assert len(retries) == 1 and retries[0]["error"]["code"] == "TASK_ERROR"
    log = await task_log(stack, task_id)
    assert "WARNING attempt 1 failed with TASK_ERROR: " in log and "retry 1 of 1 in " in log, log


async def test_retry_task_runs_a_failed_task_again_keeping_its_history(stack: Stack) -> None:
    task_id = await submit(stack, {"fail": {"failTimes": 1}})
    assert (await finish(stack, task_id))[-1]["status"] == "FAILED"
    retried = (
        await stack.execute("mutation($id: ID!) { retryTask(id: $id) { status } }", id=task_id)
    )["retryTask"]
    assert retried["status"] == "QUEUED"
    events = await finish(stack, task_id)
    assert [e["status"] for e in events if e.get("status")] == [
        "QUEUED", "RUNNING", "FAILED", "QUEUED", "RUNNING", "SUCCEEDED"
    ]  # fmt: skip
    task = await task_of(stack, task_id)
    assert task["attempts"] == 2 and task["status"] == "SUCCEEDED"


async def test_retry_task_refuses_a_task_that_did_not_fail(api: Stack) -> None:
    task_id = await submit(api, {"echo": {"message": "x"}})
    with pytest.raises(Exception, match="only FAILED or CANCELLED") as err:
        await api.execute("mutation($id: ID!) { retryTask(id: $id) { status } }", id=task_id)
    assert err.value.errors[0]["extensions"]["code"] == "CONFLICT"  # type: ignore[attr-defined]


async def test_a_cancellation_never_consumes_a_retry(stack: Stack) -> None:
    task_id = await submit(stack, {"sleep": {"seconds": 20}}, maxRetries=3)
    await stack.subscribe(WATCH, id=task_id, limit=2)
    await stack.execute("mutation($id: ID!) { cancelTask(id: $id) { id } }", id=task_id)
    assert (await finish(stack, task_id))[-1]["status"] == "CANCELLED"
    task = await task_of(stack, task_id)
    assert task["attempts"] == 1 and task["status"] == "CANCELLED"


async def test_ready_tasks_start_in_priority_order(settings: Settings) -> None:
    priorities = [0, 5, -3, 10, 5, 0, 1, -3, 10, 2]
    async with run_api(settings) as url:
        stack = await Stack.keyed(url, settings)
        ids = [await submit(stack, {"echo": {"message": str(p)}}, priority=p) for p in priorities]
        positions = [(await task_of(stack, i))["queuePosition"] for i in ids]
        async with run_worker(settings, max_jobs=1):
            for task_id in ids:
                await finish(stack, task_id)
        tasks = [await task_of(stack, i) for i in ids]
    started = sorted(tasks, key=lambda t: t["startedAt"])
    assert [t["priority"] for t in started] == sorted(priorities, reverse=True)
    # ties keep submission order
    assert [t["id"] for t in started if t["priority"] == 10] == [ids[3], ids[8]]
    # queuePosition predicted the order
    order = {t["id"]: n for n, t in enumerate(started, start=1)}
    assert positions == [order[i] for i in ids]


async def test_a_delayed_task_does_not_start_before_its_delay(stack: Stack) -> None:
    task_id = await submit(stack, {"echo": {"message": "later"}}, delaySeconds=3)
    waiting = await task_of(stack, task_id)
    assert waiting["status"] == "QUEUED" and waiting["nextAttemptAt"] is not None
    assert waiting["queuePosition"] is None
    await finish(stack, task_id)
    task = await task_of(stack, task_id)
    created, started = (datetime.fromisoformat(task[k]) for k in ("createdAt", "startedAt"))
    assert 3.0 <= (started - created).total_seconds() < 5.5


async def test_run_at_in_the_past_runs_at_once(stack: Stack) -> None:
    task_id = await submit(stack, {"echo": {"message": "now"}}, runAt="2001-01-01T00:00:00Z")
    events = await finish(stack, task_id, within=5)
    assert events[-1]["status"] == "SUCCEEDED"


async def test_twenty_concurrent_submissions_with_one_key_create_one_task(
    api: Stack, engine: AsyncEngine
) -> None:
    ids = await asyncio.gather(
        *(submit(api, {"echo": {"message": str(i)}}, idempotencyKey="once") for i in range(20))
    )
    assert len(set(ids)) == 1
    async with engine.connect() as conn:
        assert await conn.scalar(sa.text("SELECT count(*) FROM task")) == 1


async def test_workers_query_and_worker_id_show_who_runs_what(stack: Stack) -> None:
    task_id = await submit(stack, {"sleep": {"seconds": 20}})
    await stack.subscribe(WATCH, id=task_id, limit=2)
    workers: list[dict[str, Any]] = []

    async def listed() -> bool:
        """a heartbeat since the task started lists it"""
        nonlocal workers
        query = "{ workers { id host pid startedAt lastHeartbeatAt runningTaskIds } }"
        workers = (await stack.execute(query))["workers"]
        return any(w["runningTaskIds"] for w in workers)

    await eventually(listed, within=10)
    assert len(workers) == 1 and workers[0]["runningTaskIds"] == [task_id]
    stranger = stack.as_key(await make_key(stack.settings, "stranger"))
    (seen,) = (await stranger.execute("{ workers { id runningTaskIds } }"))["workers"]
    assert seen == {"id": workers[0]["id"], "runningTaskIds": []}  # not another owner's
    task = await task_of(stack, task_id)
    assert task["workerId"] == workers[0]["id"]
    await stack.execute("mutation($id: ID!) { cancelTask(id: $id) { id } }", id=task_id)
    await finish(stack, task_id)
    assert (await task_of(stack, task_id))["workerId"] is None


# --- real processes and faults --------------------------------------------------------


async def succeeded_events(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text(
                "SELECT task_id::text, count(*) FROM task_event "
                "WHERE kind = 'status' AND data->>'status' = 'SUCCEEDED' GROUP BY task_id"
            )
        )
        return {r[0]: r[1] for r in rows}


async def test_sigkill_of_a_worker_running_50_tasks_loses_none(
    api: Stack, engine: AsyncEngine
) -> None:
    batch = [{"task": {"sleep": {"seconds": 4}}, "options": {"maxRetries": 1}} for _ in range(50)]
    await api.execute(BATCH, t=batch)
    async with worker_process(api.settings, WORKER_CONCURRENCY="50") as victim:
        await wait_for(engine, "SELECT count(*) FROM task WHERE status = 'RUNNING'", 50)
        victim.kill()  # SIGKILL: no hand-back, no goodbye
        await victim.wait()
    async with run_worker(api.settings):
        await wait_for(
            engine,
            "SELECT count(*) FROM task WHERE status IN ('SUCCEEDED', 'FAILED', 'CANCELLED')",
            50,
            within=60,
        )
    counts = await status_counts(engine)
    twice = {k: v for k, v in (await succeeded_events(engine)).items() if v > 1}
    assert counts == {"SUCCEEDED": 50}
    assert twice == {}


async def test_flushall_while_100_tasks_are_queued_loses_none(
    api: Stack, engine: AsyncEngine
) -> None:
    batch = [{"task": {"echo": {"message": str(i)}}} for i in range(100)]
    await api.execute(BATCH, t=batch)
    redis = Redis.from_url(api.settings.require_redis_url())
    try:
        assert await redis.zcard(api.settings.queue_name) == 100
        await redis.flushall()
        assert await redis.zcard(api.settings.queue_name) == 0
    finally:
        await redis.aclose()
    async with run_worker(api.settings):
        await wait_for(
            engine, "SELECT count(*) FROM task WHERE status = 'SUCCEEDED'", 100, within=30
        )
    counts = await status_counts(engine)
    assert counts == {"SUCCEEDED": 100}


async def test_api_killed_between_commit_and_enqueue_the_task_still_runs(
    settings: Settings, engine: AsyncEngine
) -> None:
    port = free_port()
    env = process_env(settings, PORT=str(port), TEST_CRASH_AFTER_COMMIT="true")
    api = await spawn("api", env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url, api)
        async with httpx.AsyncClient(base_url=url) as client:
            with pytest.raises(httpx.TransportError):
                await client.post(
                    "/graphql",
                    headers={"Authorization": f"Bearer {await make_key(settings)}"},
                    json={"query": 'mutation { submitTask(task: {echo: {message: "x"}}) { id } }'},
                )
        assert await asyncio.wait_for(api.wait(), 10) == 70
    finally:
        await stop(api)
    assert await status_counts(engine) == {"QUEUED": 1}
    async with run_worker(settings):
        await wait_for(engine, "SELECT count(*) FROM task WHERE status = 'SUCCEEDED'", 1)
    assert await status_counts(engine) == {"SUCCEEDED": 1}


async def test_sigterm_lets_short_tasks_finish_and_hands_long_ones_back(
    api: Stack, engine: AsyncEngine
) -> None:
    short = await submit(api, {"sleep": {"seconds": 1}})
    long = await submit(api, {"sleep": {"seconds": 30}})
    async with worker_process(api.settings) as worker:
        await wait_for(engine, "SELECT count(*) FROM task WHERE status = 'RUNNING'", 2)
        started = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(worker.wait(), 15) == 0
    assert time.monotonic() - started < api.settings.worker_shutdown_grace_seconds + 3
    assert (await task_of(api, short))["status"] == "SUCCEEDED"
    handed_back = await task_of(api, long)
    assert handed_back["status"] == "QUEUED"
    async with run_worker(api.settings):
        await wait_for(engine, f"SELECT status FROM task WHERE id = '{long}'", "RUNNING", within=15)


async def test_a_cancel_does_not_reach_the_attempt_after_a_retry(api: Stack) -> None:
    """Two workers hear every cancel; the one not running the task remembers it for a
    while. A retryTask soon after must still run its new attempt."""
    async with run_worker(api.settings), run_worker(api.settings):
        task_id = await submit(api, {"sleep": {"seconds": 20}})
        await api.subscribe(WATCH, id=task_id, limit=2)  # RUNNING
        await api.execute("mutation($id: ID!) { cancelTask(id: $id) { id } }", id=task_id)
        assert (await finish(api, task_id))[-1]["status"] == "CANCELLED"
        await api.execute("mutation($id: ID!) { retryTask(id: $id) { id } }", id=task_id)
        task: dict[str, Any] = {}
        for _ in range(3):  # whichever worker takes it, the new attempt keeps running
            await asyncio.sleep(0.5)
            task = await task_of(api, task_id)
            assert task["status"] in ("QUEUED", "RUNNING"), task
        assert task["status"] == "RUNNING" and task["attempts"] == 2
        await api.execute("mutation($id: ID!) { cancelTask(id: $id) { id } }", id=task_id)
        assert (await finish(api, task_id))[-1]["status"] == "CANCELLED"
