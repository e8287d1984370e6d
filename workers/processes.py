"""Process tasks: bodies that run in a child process of the worker, so that one that blocks
(time.sleep, a CPU loop, a C extension) can still be timed out and cancelled, and one that
crashes (a segfault, os._exit, the kernel's OOM killer) takes only itself down.

A type runs in a child when its `run` is a plain `def` (or its module says `PROCESS =
True`), or, per task, when its `in_process(input)` says so (`sleep {blocking: true}`).

The pool: at most WORKER_PROCESSES children per worker, each running one task at a time and
reused for the next; started on first use and kept warm. A process task waits (RUNNING,
its timeout running) for a free child when all are busy.

Ending a child: its timeout or a cancel sends SIGTERM, which raises in the body so that its
`finally` blocks run; SIGKILL follows after TASK_KILL_GRACE_SECONDS. The task ends TIMEOUT
or CANCELLED as an in-process one does. A child that exits on its own while it runs a task
(a signal, an exit code) ends that task FAILED with CRASHED, naming the signal or code. A
child over TASK_MAX_MEMORY_MB (its RSS above its own idle baseline, sampled every
MEMORY_CHECK_INTERVAL_SECONDS) is killed: LIMIT_EXCEEDED, never retried. A child that was
stopped or died is never reused: the next task starts a fresh one.

Why plain subprocesses and not a pool library: concurrent.futures' ProcessPoolExecutor marks
the whole pool broken when one child dies, and cannot kill the child of one task; loky and
pebble kill on timeout but stream nothing back while a task runs (progress, log lines), and
billiard is Celery's fork, tied to its own machinery. An asyncio subprocess per child gives
its exit status with the signal, a pipe to stream messages both ways, one child killed
alone, and a replacement that is one spawn; the protocol is `workers.child`'s, a JSON
object per line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
from pydantic import BaseModel

from taskrunner.artifacts.quotas import ArtifactQuotaExceeded
from taskrunner.artifacts.streams import ArtifactTooLarge
from taskrunner.errors import TaskrunnerError
from taskrunner.logs import event
from workers.task_context import TaskContext

log = logging.getLogger(__name__)

MB = 1024 * 1024
LINE_LIMIT = 256 * MB  # the longest message: a result (MAX results are bounded elsewhere)
START_SECONDS = 60.0  # a child that is not ready by then is not coming


class ProcessTaskError(Exception):
    """How a process task failed: `code` (a TaskErrorCode name) and message; `log` is the
    line the task's log gets (the child's traceback, or what happened to the child)."""

    def __init__(self, code: str, message: str, *, log: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.log = log
        self.retryable = retryable


class BadResult(Exception):
    """The body returned a result that cannot be serialized to JSON."""


def describe_exit(returncode: int) -> str:
    """How a child ended, as a task's message says it."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"the process running it was killed by signal {name} ({-returncode})"
    return f"the process running it exited with code {returncode}"


@dataclass
class Child:
    process: asyncio.subprocess.Process
    baseline_rss: int = 0
    usable: bool = True  # False once stopped, dead or confused: never reused
    tasks: int = 0
    # why the memory watch killed it: its closed pipe may be read before the watch returns
    killed: ProcessTaskError | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.returncode is None

    async def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(orjson.dumps(message) + b"\n")
        await self.process.stdin.drain()

    async def receive(self) -> dict[str, Any] | None:
        assert self.process.stdout is not None
        line = await self.process.stdout.readline()
        if not line:
            return None
        found: dict[str, Any] = orjson.loads(line)
        return found

    def rss(self) -> int:
        return _rss_of(self.pid)


def _rss_of(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0


@dataclass
class ProcessPool:
    """A worker's children for process tasks (see the module's docstring)."""

    size: int
    kill_grace_seconds: float
    memory_budget_mb: int
    memory_check_seconds: float
    _idle: list[Child] = field(default_factory=list)
    _busy: set[int] = field(default_factory=set)
    _slots: asyncio.Semaphore | None = None
    _closed: bool = False
    _spawning: set[asyncio.Task[None]] = field(default_factory=set)

    def rss(self) -> int:
        """The children's resident memory, in bytes."""
        return sum(c.rss() for c in self._idle) + sum(_rss_of(pid) for pid in sorted(self._busy))

    def pids(self) -> list[int]:
        """The children's pids, idle and busy (for tests and the heartbeat)."""
        return [c.pid for c in self._idle] + sorted(self._busy)

    async def run(
        self,
        tctx: TaskContext,
        module: str,
        data: BaseModel,
        *,
        function: str = "run",
    ) -> Any:
        """Run `module`.`function`(ctx, data) in a child; its result. Cancellation (a
        timeout, a cancel) stops the child and propagates; a failure raises
        ProcessTaskError (or BadResult)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.size)
        async with self._slots:
            child = await self._take()
            self._busy.add(child.pid)
            try:
                return await self._run_on(child, tctx, module, data, function)
            finally:
                self._busy.discard(child.pid)
                await self._give_back(child)

    async def _run_on(
        self, child: Child, tctx: TaskContext, module: str, data: BaseModel, function: str
    ) -> Any:
        child.tasks += 1
        await child.send(
            {
                "module": module,
                "function": function,
                "task_id": str(tctx.task_id),
                "attempt": tctx.attempt,
                "input": data.model_dump(mode="json"),
                "parent_results": tctx.parent_results,
                "sys_path": sys.path,
            }
        )
        watch = asyncio.create_task(self._watch_memory(child), name=f"memory:{child.pid}")
        child.usable = False  # until its body's end comes back in order
        reading: asyncio.Future[dict[str, Any] | None] | None = None
        try:
            while True:
                reading = asyncio.ensure_future(child.receive())
                done, _ = await asyncio.wait({reading, watch}, return_when=asyncio.FIRST_COMPLETED)
                if watch in done:  # over the budget: it was killed
                    reading.cancel()
                    raise watch.result()
                message = reading.result()
                if message is None and child.killed is not None:  # over the budget
                    raise child.killed
                if message is None:  # the pipe closed: the child died
                    code = await child.process.wait()
                    why = describe_exit(code)
                    event("task_process_crashed", logging.ERROR, pid=child.pid, reason=why)
                    raise ProcessTaskError("CRASHED", why, log=f"task_crashed: {why}")
                op = message.get("op")
                if op == "progress":
                    await tctx.progress(message["fraction"], message.get("message"))
                elif op == "log":
                    tctx.add_line(str(message["line"]), str(message.get("level") or "info"))
                elif op == "artifact":
                    await child.send(await _store(tctx, message))
                elif op == "done":
                    child.usable = True
                    return message.get("result")
                elif op == "bad_result":
                    child.usable = True
                    raise BadResult(str(message["message"]))
                elif op == "error":
                    child.usable = True
                    raise ProcessTaskError(
                        str(message["code"]),
                        str(message["message"]),
                        log=str(message.get("traceback") or message["message"]),
                        retryable=bool(message.get("retryable", True)),
                    )
                else:
                    raise ProcessTaskError(
                        "CRASHED", f"the process running it sent {op!r}", log=str(message)
                    )
        except asyncio.CancelledError:
            await self._stop(child)
            raise
        finally:
            watch.cancel()
            if reading is not None:  # cancelled while waiting for a message: not left behind
                reading.cancel()

    async def _watch_memory(self, child: Child) -> ProcessTaskError:
        """Returns (killing the child) once it grew past the budget; runs until cancelled."""
        budget = self.memory_budget_mb * MB
        while True:
            await asyncio.sleep(self.memory_check_seconds)
            grown = child.rss() - child.baseline_rss
            if grown > budget:
                why = (
                    f"its process grew by {grown / MB:.0f} MB, over TASK_MAX_MEMORY_MB "
                    f"({self.memory_budget_mb})"
                )
                child.killed = ProcessTaskError(
                    "LIMIT_EXCEEDED", why, log=f"task_killed: {why}", retryable=False
                )
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
                event("task_killed", logging.ERROR, reason=why, pid=child.pid)
                await child.process.wait()
                return child.killed

    async def _stop(self, child: Child) -> None:
        """SIGTERM, then SIGKILL after the grace; waits until it is gone."""
        child.usable = False
        if not child.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            child.process.terminate()
        try:
            await asyncio.shield(asyncio.wait_for(child.process.wait(), self.kill_grace_seconds))
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
            await asyncio.shield(child.process.wait())
        except asyncio.CancelledError:  # cancelled again meanwhile: kill without waiting
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
            raise

    async def _take(self) -> Child:
        while self._idle:
            child = self._idle.pop()
            if child.alive() and child.usable:
                return child
        return await self._spawn()

    async def _give_back(self, child: Child) -> None:
        if child.usable and child.alive() and not self._closed:
            self._idle.append(child)
            return
        if child.alive():  # confused (an error of the protocol): not reused
            await self._stop(child)
        if not self._closed:  # a fresh one replaces it, warm for the next task
            spawning = asyncio.create_task(self._replace(), name="process-pool-replace")
            self._spawning.add(spawning)
            spawning.add_done_callback(self._spawning.discard)

    async def _replace(self) -> None:
        try:
            child = await self._spawn()
        except Exception:
            log.exception("could not start a process for process tasks; the next task will")
            return
        if self._closed:
            await self._stop(child)
        else:
            self._idle.append(child)

    async def _spawn(self) -> Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "workers.child",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=LINE_LIMIT,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
        )
        child = Child(process)
        try:
            ready = await asyncio.wait_for(child.receive(), START_SECONDS)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            raise
        if ready is None or ready.get("op") != "ready":
            code = await process.wait()
            raise ProcessTaskError(
                "CRASHED", f"a process for it did not start: {describe_exit(code)}", log=""
            )
        child.baseline_rss = child.rss()
        event("task_process_started", pid=child.pid)
        return child

    async def aclose(self) -> None:
        """Stop every child (the worker stops)."""
        self._closed = True
        for spawning in list(self._spawning):
            spawning.cancel()
        idle, self._idle = self._idle, []
        for child in idle:
            if child.process.stdin is not None:
                child.process.stdin.close()  # it reads EOF and exits
            await self._stop(child)


async def _store(tctx: TaskContext, message: dict[str, Any]) -> dict[str, Any]:
    """Store an artifact a child wrote to a file; the reply it waits for."""
    try:
        record = await tctx.artifact(
            str(message["name"]), Path(message["path"]), str(message["content_type"])
        )
    except (ArtifactTooLarge, ArtifactQuotaExceeded) as exc:
        return {"ok": False, "error": exc.message, "code": "LIMIT_EXCEEDED"}
    except TaskrunnerError as exc:
        return {"ok": False, "error": exc.message, "code": exc.code}
    return {
        "ok": True,
        "artifact": {"id": str(record.id), "name": record.name, "size": record.size},
    }
