"""User hooks (seed 001, issue 22): a task module's on_success, on_failure and on_retry run
after the status they follow is committed, at least once (a worker killed in a hook leaves
it to another worker), and a hook that fails or hangs is logged and changes nothing. Real
api and worker processes with a task package of the test's own, as a user would write it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import connections
from taskrunner.config import Settings
from tests.support.environment import task_package
from tests.support.processes import api_process, worker_process
from tests.support.rows import new_task
from tests.support.stack import Stack
from tests.support.tasks import finish, submit
from tests.support.waiting import eventually
from workers import hooks

# A task type with all three hooks. Each hook writes a line to HOOK_LOG: which hook, for
# which attempt, and the status PostgreSQL has for the task as the hook runs (committed
# before it ran). `input.hook_fails` makes the named hook raise; `input.hook_hangs` makes it
# sleep past HOOK_TIMEOUT_SECONDS; `input.hook_kills` makes it end its worker the first time
# (a marker file next to HOOK_LOG says it did), then succeed.
HOOKED = '''
"""A task with hooks."""
import asyncio
import json
import os
from pathlib import Path

from pydantic import BaseModel

NAME = "hooked"


class Input(BaseModel):
    fail_times: int = 0
    sleep: float = 0
    hook_fails: str = ""
    hook_hangs: str = ""
    hook_kills: str = ""


async def run(ctx, input):
    await asyncio.sleep(input.sleep)
    if ctx.attempt <= input.fail_times:
        raise RuntimeError(f"attempt {ctx.attempt} fails")
    return {"attempt": ctx.attempt}


async def _note(name, task):
    log = Path(os.environ["HOOK_LOG"])
    if task.input.get("hook_kills") == name:
        marker = log.with_suffix(".killed")
        if not marker.exists():
            marker.write_text("1")
            os._exit(1)  # the worker dies inside the hook: its status is committed
    if task.input.get("hook_hangs") == name:
        await asyncio.sleep(3600)
    if task.input.get("hook_fails") == name:
        raise ValueError(f"{name} fails on purpose")
    line = {"hook": name, "task": str(task.id), "attempt": task.attempt,
            "status": task.status, "error": task.error_code, "result": task.result,
            "pid": os.getpid()}
    with log.open("a") as f:
        f.write(json.dumps(line) + "\\n")


async def on_success(task):
    await _note("on_success", task)


async def on_failure(task):
    await _note("on_failure", task)


async def on_retry(task):
    await _note("on_retry", task)
'''


def lines(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


async def hooks_due(engine: AsyncEngine, task_id: str) -> Any:
    async with engine.connect() as conn:
        return await conn.scalar(
            sa.text("SELECT hooks_due FROM task WHERE id = :id"), {"id": task_id}
        )


def environment(tmp_path: Path) -> tuple[dict[str, str], Path]:
    log = tmp_path / "hooks.jsonl"
    env = task_package(tmp_path, "hooked_tasks", {"hooked": HOOKED})
    return {**env, "HOOK_LOG": str(log), "HOOK_TIMEOUT_SECONDS": "1"}, log


async def test_each_hook_runs_once_its_status_is_committed(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    env, log = environment(tmp_path)
    async with worker_process(settings, **env), api_process(settings, **env) as url:
        stack = await Stack.keyed(url, settings)
        retried = await submit(stack, {"hooked": {"failTimes": 1}}, maxRetries=1)
        failed = await submit(stack, {"hooked": {"failTimes": 5}}, maxRetries=0)
        await finish(stack, retried)
        await finish(stack, failed)

        async def all_ran() -> bool:
            """the three hooks ran"""
            return len(lines(log)) == 3

        await eventually(all_ran, within=10)
    by_task = {(n["task"], n["hook"]): n for n in lines(log)}
    assert by_task[(retried, "on_retry")]["attempt"] == 1
    # queued again (its error kept until an attempt succeeds), not RUNNING any more
    assert by_task[(retried, "on_retry")]["status"] in ("QUEUED", "RUNNING", "SUCCEEDED")
    assert by_task[(retried, "on_retry")]["error"] == "TASK_ERROR"
    success = by_task[(retried, "on_success")]
    assert (success["attempt"], success["status"]) == (2, "SUCCEEDED")
    assert success["result"] == {"attempt": 2}
    failure = by_task[(failed, "on_failure")]
    assert (failure["attempt"], failure["status"], failure["error"]) == (1, "FAILED", "TASK_ERROR")
    assert await hooks_due(engine, retried) is None and await hooks_due(engine, failed) is None


async def test_a_hook_that_fails_or_hangs_is_logged_and_changes_nothing(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    env, log = environment(tmp_path)
    worker_log = tmp_path / "worker.log"
    async with worker_process(settings, worker_log, **env), api_process(settings, **env) as url:
        stack = await Stack.keyed(url, settings)
        raising = await submit(stack, {"hooked": {"hookFails": "on_success"}})
        hanging = await submit(stack, {"hooked": {"hookHangs": "on_success"}})
        after = await submit(stack, {"hooked": {}})
        for task_id in (raising, hanging, after):
            events = await finish(stack, task_id)
            assert events[-1]["status"] == "SUCCEEDED"

        async def logged() -> bool:
            """both failures are logged and the next task's hook ran"""
            text = worker_log.read_text()
            return text.count("hook_failed") >= 2 and len(lines(log)) == 1

        await eventually(logged, within=15)
        text = worker_log.read_text()
        assert "on_success fails on purpose" in text and "ran past 1.0s" in text
        for task_id in (raising, hanging):
            assert await hooks_due(engine, task_id) is None  # run once: not again
            task = await stack.execute("query($id: ID!) { task(id: $id) { status } }", id=task_id)
            assert task["task"]["status"] == "SUCCEEDED"
    assert [n["task"] for n in lines(log)] == [after]


async def test_a_worker_killed_in_a_hook_leaves_it_to_another_worker(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    env, log = environment(tmp_path)
    async with (
        worker_process(settings, **env) as first,
        worker_process(settings, **env) as second,
        api_process(settings, **env) as url,
    ):
        stack = await Stack.keyed(url, settings)
        task_id = await submit(stack, {"hooked": {"hookKills": "on_success"}})
        await finish(stack, task_id)  # SUCCEEDED is committed before the hook runs

        async def one_died() -> bool:
            """the worker running the hook died in it"""
            return (tmp_path / "hooks.killed").exists() and (
                first.returncode is not None or second.returncode is not None
            )

        await eventually(one_died, within=10)
        assert await hooks_due(engine, task_id) == ["on_success:1"]

        async def ran() -> bool:
            """the other worker ran the hook once the lease (2 x HOOK_TIMEOUT_SECONDS) ran out"""
            return len(lines(log)) == 1

        await eventually(ran, within=15)
        (note,) = lines(log)
        survivor = second if first.returncode is not None else first
        assert note["pid"] == survivor.pid
        assert (note["hook"], note["status"]) == ("on_success", "SUCCEEDED")

        async def cleared() -> bool:
            """the hook is no longer due"""
            return await hooks_due(engine, task_id) is None

        await eventually(cleared, within=5)
        await asyncio.sleep(2.5)  # more than a lease later, nobody has run it again
        assert len(lines(log)) == 1


async def test_the_reconcilers_end_of_a_lost_attempt_calls_its_hook(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    """A worker killed while it runs the last attempt: the reconciler fails the task with
    WORKER_LOST, and on_failure runs (on the worker left) all the same."""
    env, log = environment(tmp_path)
    async with (
        worker_process(settings, **env) as first,
        api_process(settings, **env) as url,
    ):
        stack = await Stack.keyed(url, settings)
        task_id = await submit(stack, {"hooked": {"sleep": 60}}, maxRetries=0)

        async def running() -> bool:
            """the task runs"""
            found = await stack.execute("query($id: ID!) { task(id: $id) { status } }", id=task_id)
            return bool(found["task"]["status"] == "RUNNING")

        await eventually(running, within=10)
        first.kill()
        await first.wait()
        async with worker_process(settings, **env):
            events = await finish(stack, task_id, within=30)
            assert (events[-1]["status"], events[-1]["error"]["code"]) == ("FAILED", "WORKER_LOST")

            async def ran() -> bool:
                """on_failure ran"""
                return len(lines(log)) == 1

            await eventually(ran, within=10)
    (note,) = lines(log)
    assert (note["hook"], note["status"], note["error"]) == ("on_failure", "FAILED", "WORKER_LOST")
    assert note["attempt"] == 1
    assert await hooks_due(engine, task_id) is None


async def test_a_hook_recorded_meanwhile_keeps_its_lease_and_is_run_once_it_runs_out(
    engine: AsyncEngine,
) -> None:
    """A worker that ran one hook clears only that one: a hook a later attempt recorded
    meanwhile keeps its worker's lease, and once that runs out the sweep takes it (a NULL
    lease was never taken: the hook ran zero times)."""
    task_id = await new_task(engine, type="hooked")
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "UPDATE task SET hooks_due = ARRAY['on_retry:1', 'on_success:2'], "
                "hooks_lease = clock_timestamp() + interval '0.5 s' WHERE id = :id"
            ),
            {"id": task_id},
        )
    async with connections.connection(engine) as conn:
        await conn.execute(hooks.DONE, task_id, ["on_retry:1"])  # the first worker's run
        row = await conn.fetchrow("SELECT hooks_due, hooks_lease FROM task WHERE id = $1", task_id)
        assert row["hooks_due"] == ["on_success:2"] and row["hooks_lease"] is not None
        assert await conn.fetchval(hooks.TAKE, ["hooked"], 10.0) is None  # still leased
        await asyncio.sleep(0.6)
        assert await conn.fetchval(hooks.TAKE, ["hooked"], 10.0) == task_id
        await conn.execute(hooks.DONE, task_id, ["on_success:2"])
        row = await conn.fetchrow("SELECT hooks_due, hooks_lease FROM task WHERE id = $1", task_id)
        assert row["hooks_due"] is None and row["hooks_lease"] is None
