"""Process tasks with real servers (issue 20): a body that blocks runs in a child process of
the worker, where a timeout or a cancel ends it (SIGTERM, then SIGKILL after
TASK_KILL_GRACE_SECONDS) while the worker's other tasks go on; a child that crashes ends its
task CRASHED and the next task runs; progress, log lines and artifacts come through; the
memory budget applies to the child."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from taskrunner.config import Settings
from tests.support.environment import task_package
from tests.support.processes import api_process, worker_process
from tests.support.servers import run_worker
from tests.support.stack import Stack
from tests.support.tasks import ended as task_ended
from tests.support.tasks import submit
from tests.support.waiting import eventually

GRACE = 1.0
TASK = """
query($id: ID!) {
  task(id: $id) {
    id status attempts progress progressMessage result error { code message }
    artifacts { name size } events { __typename ... on LogAppended { line level } }
  }
}"""
CANCEL = "mutation($id: ID!) { cancelTask(id: $id) { status } }"


async def ended(stack: Stack, task_id: str, within: float = 20) -> dict[str, Any]:
    return await task_ended(stack, TASK, task_id, within)


async def status(stack: Stack, task_id: str) -> str:
    return str((await stack.execute(TASK, id=task_id))["task"]["status"])


def children_of(pid: int) -> list[psutil.Process]:
    """The live child processes of process tasks under `pid`."""
    found = []
    for proc in psutil.Process(pid).children(recursive=True):
        try:
            if "workers.child" in " ".join(proc.cmdline()) and proc.status() != "zombie":
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.fixture
def quick_kill(settings: Settings) -> Settings:
    return settings.model_copy(update={"task_kill_grace_seconds": GRACE})


async def test_a_blocking_task_times_out_while_the_worker_runs_others(
    quick_kill: Settings, api: Stack
) -> None:
    async with run_worker(quick_kill):
        began = time.monotonic()
        blocked = await submit(api, {"sleep": {"seconds": 60, "blocking": True}}, timeoutSeconds=2)

        async def running() -> bool:
            """the blocking task runs"""
            return await status(api, blocked) == "RUNNING"

        await eventually(running, within=10)
        echo_began = time.monotonic()
        echo = await submit(api, {"echo": {"message": "meanwhile"}})
        assert (await ended(api, echo, within=5))["status"] == "SUCCEEDED"
        assert time.monotonic() - echo_began < 1.5  # the loop is free: not after the sleep
        final = await ended(api, blocked, within=15)
        took = time.monotonic() - began
    assert (final["status"], final["error"]["code"]) == ("FAILED", "TIMEOUT"), final
    assert took < 2 + GRACE + 3.0, took  # its timeout, the grace, and a loaded machine


STUBBORN = '''
"""Ignore SIGTERM and block: only SIGKILL ends it."""

import signal
import time

from pydantic import BaseModel

NAME = "stubborn"


class Input(BaseModel):
    seconds: float = 60


def run(ctx, input: Input) -> dict:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctx.log("ignoring SIGTERM")
    time.sleep(input.seconds)
    return {}
'''
CRASH = '''
"""Die: os._exit(code), or a signal to itself."""

import os
import signal

from pydantic import BaseModel

NAME = "crash"


class Input(BaseModel):
    exit_code: int = 0
    signal: int = 0


def run(ctx, input: Input) -> dict:
    if input.signal:
        os.kill(os.getpid(), input.signal)
    os._exit(input.exit_code)
'''
REPORTER = '''
"""Report progress, log lines (ctx.log and logging), an artifact; return a result."""

import logging

from pydantic import BaseModel

NAME = "reporter"
log = logging.getLogger("my_tasks.reporter")


class Input(BaseModel):
    text: str = "hello"
    fail: bool = False


def run(ctx, input: Input) -> dict:
    ctx.progress(0.5, "halfway")
    ctx.log("from ctx.log", "warning")
    log.info("from logging")
    stored = ctx.artifact("out.txt", input.text.encode(), "text/plain")
    if input.fail:
        raise ValueError("failed in the child")
    return {"artifact": stored["name"], "size": stored["size"], "attempt": ctx.attempt}
'''
HOG = '''
"""Hold `mb` megabytes for a while."""

import time

from pydantic import BaseModel

NAME = "hog"


class Input(BaseModel):
    mb: int


def run(ctx, input: Input) -> dict:
    block = bytearray(input.mb * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(30)
    return {"held": len(block)}
'''


@pytest.fixture
async def custom(quick_kill: Settings, tmp_path: Path) -> Any:
    """An api and a worker process that know the process task types above."""
    extra = task_package(
        tmp_path,
        "my_tasks",
        {"stubborn": STUBBORN, "crash": CRASH, "reporter": REPORTER, "hog": HOG},
    )
    extra |= {"TASK_KILL_GRACE_SECONDS": str(GRACE), "TASK_MAX_MEMORY_MB": "100"}
    async with (
        worker_process(quick_kill, tmp_path / "worker.log", **extra) as worker,
        api_process(quick_kill, tmp_path / "api.log", **extra) as url,
    ):
        yield await Stack.keyed(url, quick_kill), worker.pid


async def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(custom: Any) -> None:
    stack, worker_pid = custom
    began = time.monotonic()
    task_id = await submit(stack, {"stubborn": {}}, timeoutSeconds=2)
    final = await ended(stack, task_id, within=20)
    took = time.monotonic() - began
    assert (final["status"], final["error"]["code"]) == ("FAILED", "TIMEOUT"), final
    assert 2 + GRACE - 0.2 < took < 2 + GRACE + 4.0, took  # SIGTERM did nothing: SIGKILL did

    async def replaced() -> bool:
        """a fresh child replaces the killed one, and nothing else is left"""
        return len(children_of(worker_pid)) == 1

    await eventually(replaced, within=10)


async def test_cancelling_a_process_task_ends_its_child(custom: Any) -> None:
    stack, worker_pid = custom
    task_id = await submit(stack, {"sleep": {"seconds": 60, "blocking": True}})
    pids: list[int] = []

    async def running() -> bool:
        """the task runs in a child"""
        pids[:] = [p.pid for p in children_of(worker_pid)]
        return await status(stack, task_id) == "RUNNING" and len(pids) == 1

    await eventually(running, within=15)
    await stack.execute(CANCEL, id=task_id)
    assert (await ended(stack, task_id, within=5 + GRACE))["status"] == "CANCELLED"
    assert not psutil.pid_exists(pids[0]) or psutil.Process(pids[0]).status() == "zombie"


@pytest.mark.parametrize(
    ("crash", "says"),
    [
        ({"exitCode": 3}, "exited with code 3"),
        ({"signal": 11}, "killed by signal SIGSEGV (11)"),
    ],
)
async def test_a_crashing_child_fails_its_task_crashed_and_the_next_task_runs(
    custom: Any, crash: dict[str, int], says: str
) -> None:
    stack, _ = custom
    task_id = await submit(stack, {"crash": crash})
    final = await ended(stack, task_id)
    assert (final["status"], final["error"]["code"]) == ("FAILED", "CRASHED"), final
    assert says in final["error"]["message"]
    assert any(says in (e.get("line") or "") for e in final["events"])  # in its log too
    after = await ended(stack, await submit(stack, {"reporter": {}}))
    assert after["status"] == "SUCCEEDED", after  # the worker goes on, in a fresh child


async def test_progress_lines_and_artifacts_come_from_the_child(custom: Any) -> None:
    stack, _ = custom
    final = await ended(stack, await submit(stack, {"reporter": {"text": "abc"}}))
    assert final["status"] == "SUCCEEDED", final
    assert final["result"] == {"artifact": "out.txt", "size": 3, "attempt": 1}
    assert final["progress"] == 1.0
    lines = {(e["line"], e["level"]) for e in final["events"] if e["__typename"] == "LogAppended"}
    assert {("from ctx.log", "warning"), ("from logging", "info")} <= lines
    assert {"name": "out.txt", "size": 3} in final["artifacts"]
    failed = await ended(stack, await submit(stack, {"reporter": {"fail": True}}, maxRetries=1))
    assert (failed["status"], failed["attempts"]) == ("FAILED", 2)  # retried like any failure
    assert failed["error"]["message"] == "ValueError: failed in the child"
    traceback = [e["line"] for e in failed["events"] if "Traceback" in (e.get("line") or "")]
    assert traceback and "failed in the child" in traceback[0]  # the child's own traceback


async def test_the_memory_budget_applies_to_the_child(custom: Any) -> None:
    stack, _ = custom
    final = await ended(stack, await submit(stack, {"hog": {"mb": 300}}, maxRetries=2))
    assert (final["status"], final["error"]["code"]) == ("FAILED", "LIMIT_EXCEEDED"), final
    assert final["attempts"] == 1  # a memory kill is never retried
    assert "TASK_MAX_MEMORY_MB (100)" in final["error"]["message"]
    after = await ended(stack, await submit(stack, {"reporter": {}}))
    assert after["status"] == "SUCCEEDED"


async def test_the_pool_is_bounded_by_worker_processes(custom: Any) -> None:
    stack, worker_pid = custom
    ids = [await submit(stack, {"sleep": {"seconds": 30, "blocking": True}}) for _ in range(3)]

    async def two_running() -> bool:
        """WORKER_PROCESSES (2) children, each running a task"""
        return len(children_of(worker_pid)) == 2

    await eventually(two_running, within=15)
    await asyncio.sleep(1.0)  # the third waits: no third child comes
    assert len(children_of(worker_pid)) == 2
    for task_id in ids:
        await stack.execute(CANCEL, id=task_id)
    for task_id in ids:
        assert (await ended(stack, task_id, within=10))["status"] == "CANCELLED"
