"""`taskrunner dev` supervises its api and worker: one that dies (SIGKILL, the OOM killer,
a crash) is started again with backoff and the console says so; only Ctrl-C or SIGTERM
stops the stack. Its tasks are recovered by the reconciler like any dead worker's."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest
from gql.transport.exceptions import TransportError

from taskrunner.embedded import free_port
from taskrunner.supervisor import Stop, Supervised, describe_exit, raise_stop, signals_held
from tests.support.processes import ctrl_c, dev_env, pid_alive, spawn
from tests.support.stack import Stack
from tests.support.tasks import BATCH
from tests.support.waiting import eventually

TASKS = 20
SLEEP_SECONDS = 2.5
# Fast recovery of the killed worker's tasks: silent for 5 heartbeats (1.5 s), found by
# the next reconcile pass of the restarted worker.
FAST_RECOVERY = {
    "HEARTBEAT_INTERVAL_SECONDS": "0.3",
    "RECONCILE_INTERVAL_SECONDS": "0.5",
    "SCHEDULER_INTERVAL_SECONDS": "0.1",
    "WORKER_POLL_DELAY_SECONDS": "0.02",
    "WORKER_SHUTDOWN_GRACE_SECONDS": "2",
    "WORKER_METRICS_PORT": "0",
}


@dataclass
class DevStack:
    """A running `taskrunner dev`: the process, its console (stdout and stderr, read as
    they come), and a client with its development key."""

    process: asyncio.subprocess.Process
    stack: Stack
    console: list[str] = field(default_factory=list)

    def said(self, text: str) -> bool:
        return any(text in line for line in self.console)

    async def wait_said(self, text: str, within: float) -> None:
        deadline = time.monotonic() + within
        while not self.said(text):
            assert time.monotonic() < deadline, f"no {text!r} on the console: {self.console}"
            await asyncio.sleep(0.05)

    def children(self, role: str) -> list[psutil.Process]:
        """Its live `taskrunner ROLE` processes."""
        found = []
        for child in psutil.Process(self.process.pid).children():
            try:
                if child.cmdline()[-2:] == ["taskrunner", role]:
                    found.append(child)
            except psutil.NoSuchProcess:
                continue
        return found


@asynccontextmanager
async def dev_stack(data_dir: Path, **env: str) -> AsyncIterator[DevStack]:
    port = free_port()
    process = await spawn(
        "dev",
        env=dev_env(data_dir, port, **env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # its own process group, like a terminal job
    )
    dev = DevStack(process, Stack(f"http://127.0.0.1:{port}", settings=None))  # type: ignore[arg-type]
    key = asyncio.get_running_loop().create_future()

    async def read() -> None:
        assert process.stdout is not None
        while line := (await process.stdout.readline()).decode(errors="replace"):
            dev.console.append(line.rstrip("\n"))
            if line.startswith("API key: ") and not key.done():
                key.set_result(line.removeprefix("API key: ").strip())
        if not key.done():
            key.set_exception(AssertionError("taskrunner dev exited before printing its key"))

    reader = asyncio.create_task(read())
    try:
        dev.stack.key = await asyncio.wait_for(key, 90)
        yield dev
    finally:
        if process.returncode is None:
            await ctrl_c(process)  # callers check its exit code
        await asyncio.wait_for(reader, 10)


async def statuses(stack: Stack, ids: list[str]) -> dict[str, str]:
    result = await stack.execute("{ tasks(first: 100) { edges { node { id status } } } }")
    nodes = [e["node"] for e in result["tasks"]["edges"]]
    return {n["id"]: n["status"] for n in nodes if n["id"] in ids}


async def test_a_sigkilled_worker_is_restarted_and_its_tasks_all_succeed(tmp_path: Path) -> None:
    async with dev_stack(tmp_path / "data", **FAST_RECOVERY) as dev:
        batch = [
            {"task": {"sleep": {"seconds": SLEEP_SECONDS}}, "options": {"maxRetries": 1}}
            for _ in range(TASKS)
        ]
        submitted = await dev.stack.execute(BATCH, t=batch)
        ids = [t["id"] for t in submitted["submitTasks"]]

        async def all_running() -> bool:
            return list((await statuses(dev.stack, ids)).values()).count("RUNNING") == TASKS

        await eventually(all_running, within=20, step=0.1)
        [worker] = dev.children("worker")
        worker.send_signal(signal.SIGKILL)  # what the kernel's OOM killer sends

        async with asyncio.timeout(40):  # ~10 s: restart, 5 missed heartbeats, retry, rerun
            while True:
                assert dev.process.returncode is None, (
                    "taskrunner dev stopped when its worker died:\n" + "\n".join(dev.console)
                )
                try:
                    now = await statuses(dev.stack, ids)
                except TransportError:  # the stack is going down: the check above says so
                    now = {}
                if list(now.values()).count("SUCCEEDED") == TASKS:
                    break
                await asyncio.sleep(0.25)

        assert dev.said("worker exited (killed by SIGKILL); restarting in"), dev.console
        assert dev.process.returncode is None
        [restarted] = dev.children("worker")
        assert restarted.pid != worker.pid
        assert dev.said(f"worker started again (pid {restarted.pid})"), dev.console
        assert len(dev.children("api")) == 1
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{dev.stack.url}/readyz")).status_code == 200
    # Ctrl-C (in dev_stack) still stops everything, the embedded servers included.
    assert dev.process.returncode == 0
    assert not pid_alive(tmp_path / "data" / "postgres" / "postmaster.pid")
    assert not pid_alive(tmp_path / "data" / "redis" / "redis.pid")


async def test_sigterm_stops_the_stack_even_while_a_restart_is_pending(tmp_path: Path) -> None:
    """SIGTERM (what `docker stop` or a service manager sends) stops everything, whatever
    the supervisor is doing, and stops PostgreSQL and Redis cleanly."""
    async with dev_stack(tmp_path / "data") as dev:
        [api] = dev.children("api")
        api.send_signal(signal.SIGKILL)
        await dev.wait_said("api exited (killed by SIGKILL); restarting in", within=10)
        assert dev.process.returncode is None, dev.console
        dev.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(dev.process.wait(), 60) == 0
    assert not pid_alive(tmp_path / "data" / "postgres" / "postmaster.pid")
    assert not pid_alive(tmp_path / "data" / "redis" / "redis.pid")
    assert not (tmp_path / "data" / "dev-database-url").exists()


# ------------------------------------------------------------------ the supervisor alone


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_backoff_doubles_up_to_its_cap_and_resets_once_a_process_stayed_up() -> None:
    lines: list[str] = []
    child = Supervised(
        "crasher",
        _python("import sys; sys.exit(3)"),
        env=dict(os.environ),
        first_delay=0.1,
        max_delay=0.4,
        stable_after=60.0,
        say=lines.append,
    )
    child.start()
    delays: list[float] = []
    deadline = time.monotonic() + 20
    while len(delays) < 4 and time.monotonic() < deadline:
        if (delay := child.check()) is not None:
            delays.append(delay)
        time.sleep(0.01)
    child.stop()
    assert delays == [0.1, 0.2, 0.4, 0.4]
    assert lines[:3] == [
        "crasher exited (exit code 3); restarting in 0.1 s",
        lines[1],
        "crasher exited (exit code 3); restarting in 0.2 s",
    ]
    assert re.fullmatch(r"crasher started again \(pid \d+\)", lines[1])

    # one that stayed up past stable_after is restarted after the first delay again
    child.stable_after = 0.0
    child.start()
    while (delay := child.check()) is None:
        time.sleep(0.01)
    child.stop()
    assert delay == 0.1


def test_a_killed_process_is_named_by_its_signal() -> None:
    lines: list[str] = []
    child = Supervised(
        "worker",
        _python("import time; time.sleep(60)"),
        env=dict(os.environ),
        first_delay=0.1,
        say=lines.append,
    )
    child.start()
    assert child.process is not None
    first = child.process.pid
    child.process.send_signal(signal.SIGKILL)
    child.process.wait(10)
    assert child.check() == 0.1
    assert lines == ["worker exited (killed by SIGKILL); restarting in 0.1 s"]
    assert child.process is None  # waiting out its delay
    deadline = time.monotonic() + 5
    while child.process is None and time.monotonic() < deadline:
        child.check()
        time.sleep(0.01)
    assert child.process is not None and child.process.pid != first
    assert child.process.poll() is None
    assert lines[1] == f"worker started again (pid {child.process.pid})"
    child.stop()
    assert child.process is None


def test_stop_kills_a_child_that_ignores_sigterm() -> None:
    child = Supervised(
        "stubborn",
        _python(
            "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)"
        ),
        env=dict(os.environ),
        stop_timeout=0.5,
        stdout=subprocess.PIPE,
    )
    child.start()
    assert child.process is not None and child.process.stdout is not None
    assert child.process.stdout.readline() == b"ready\n"
    process, stdout = child.process, child.process.stdout
    child.stop()
    stdout.close()
    assert process.returncode == -signal.SIGKILL


def test_ctrl_c_and_sigterm_wait_while_a_child_is_being_started() -> None:
    """A signal inside `signals_held()` (starting a child and recording it) is raised on
    leaving it, so no child is ever started without being recorded, and so stopped."""
    previous = signal.signal(signal.SIGTERM, raise_stop)
    try:
        with pytest.raises(Stop), signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler has run by now, and raised nothing
            reached_the_end = True
        assert reached_the_end
        with pytest.raises(Stop):  # outside, at once
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize(
    ("code", "described"),
    [
        (0, "exit code 0"),
        (70, "exit code 70"),
        (-9, "killed by SIGKILL"),
        (-15, "killed by SIGTERM"),
    ],
)
def test_exit_descriptions(code: int, described: str) -> None:
    assert describe_exit(code) == described
