"""TASK_MAX_MEMORY_MB, enforced while tasks run: a task that makes its worker outgrow the
budget is cancelled and ends FAILED with LIMIT_EXCEEDED, instead of taking the worker (and
every other task on it) down.

How it works:
- At start-up the worker records its resident memory (RSS) as its baseline.
- Each task's body runs metered: the change of RSS across each of its steps (the code it
  runs between two `await`s that wait) is added to its growth. An asyncio loop runs one
  step at a time, so this is the memory the task itself made the process add.
- Every MEMORY_CHECK_INTERVAL_SECONDS the watchdog samples the RSS. Past baseline +
  TASK_MAX_MEMORY_MB it blames the running task that grew most (a tie goes to the most
  recently started) and cancels it. The runner records it FAILED with LIMIT_EXCEEDED
  (a `task_killed` log line first): neither a user's CANCELLED nor a retry, and never
  retried automatically.
- Once the killed task has ended, the watchdog collects garbage, asks glibc to return
  free memory to the system (`malloc_trim(0)`) and re-baselines at what remains, so that
  memory the allocator kept is not blamed on the tasks that run next. It re-baselines the
  same way when the process is over budget while no running task grew.

Limitations: the tasks of a worker share one process, so attribution is approximate.
Memory added by threads a task starts (`asyncio.to_thread`), by helper asyncio tasks it
creates, or by the worker's own machinery is counted in the total but blamed on whichever
task grew most; the total of several moderate tasks can cross the budget; and a
re-baseline after a kill absorbs what the other running tasks hold. The check is
periodic: a task can overshoot by what it allocates in one interval (or in one step
without an `await`). For an exact budget per task, run memory-hungry task types on workers
of their own with WORKER_CONCURRENCY=1.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import platform
import types
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol, TypeVar

import psutil

log = logging.getLogger(__name__)

MB = 1024 * 1024
T = TypeVar("T")


class RunningBody(Protocol):
    """A task's attempt as the watchdog sees it: the asyncio task of its body
    (workers.worker_context.Running)."""

    @property
    def body(self) -> asyncio.Task[Any]: ...


class _Statm:
    """RSS from /proc/self/statm through a file kept open: cheap enough to read at every step
    of every task, which psutil is not."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.pid = -1
        self.fd = -1

    def rss(self) -> int:
        if self.pid != os.getpid():  # first use, or a forked child
            self.fd = os.open("/proc/self/statm", os.O_RDONLY)
            self.pid = os.getpid()
        return int(os.pread(self.fd, 200, 0).split()[1]) * self.page


@cache
def _rss_reader() -> Callable[[], int]:
    try:
        statm = _Statm()
        statm.rss()
    except (OSError, ValueError, IndexError):  # not Linux: psutil knows the others
        process = psutil.Process()
        return lambda: int(process.memory_info().rss)
    return statm.rss


def process_rss() -> int:
    """This process's resident set size, in bytes."""
    return _rss_reader()()


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_memory() -> None:
    """Collect garbage, then hand the allocator's free memory back to the system (glibc)."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@types.coroutine
def _metered(
    coro: Coroutine[Any, Any, T], add: Callable[[int, int], None], rss: Callable[[], int]
) -> Generator[Any, Any, T]:
    """Await `coro`, passing to `add` the RSS change across each of its steps, and the RSS
    after it."""
    value: Any = None
    error: BaseException | None = None
    while True:
        before = rss()
        try:
            if error is None:
                signal = coro.send(value)
            else:
                # Hold no exception in this frame (a cycle through its traceback would keep
                # the task's frames, and the memory they hold, until the next collection).
                thrown, error = error, None
                try:
                    signal = coro.throw(thrown)
                finally:
                    del thrown
        except StopIteration as stop:
            after = rss()
            add(after - before, after)
            return stop.value  # type: ignore[no-any-return]
        except BaseException:
            after = rss()
            add(after - before, after)
            raise
        after = rss()
        add(after - before, after)
        value = None
        try:
            value = yield signal
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # cancellation, thrown in by the asyncio task
            error = exc


@dataclass(frozen=True)
class Kill:
    task_id: uuid.UUID
    body: asyncio.Task[Any]


class MemoryWatchdog:
    """One per worker. The runner calls `started`, `metered` and `finished` for each task;
    a background loop calls `check`."""

    def __init__(
        self,
        running: Mapping[uuid.UUID, RunningBody],
        budget_mb: int,
        rss: Callable[[], int] = process_rss,
        release: Callable[[], None] = release_memory,
    ) -> None:
        self.running = running
        self.budget_mb = budget_mb
        self._rss = rss
        self._release = release
        self.baseline = rss()
        self._grown: dict[uuid.UUID, int] = {}  # running task -> RSS added in its steps
        self._peak: dict[uuid.UUID, int] = {}  # running task -> highest RSS seen meanwhile
        self._kills: dict[uuid.UUID, str] = {}  # killed, not yet finished -> why
        self._victim: Kill | None = None  # the last kill, until memory is reclaimed after it

    def started(self, task_id: uuid.UUID) -> None:
        """A task's body starts now."""
        self._grown[task_id] = 0
        self._peak[task_id] = self._rss()

    def metered(self, task_id: uuid.UUID, coro: Coroutine[Any, Any, T]) -> Awaitable[T]:
        """`coro` (the task's body), counting the memory it adds as the task's."""

        def add(delta: int, rss: int) -> None:
            if task_id in self._grown:
                self._grown[task_id] += delta
                self._peak[task_id] = max(self._peak[task_id], rss)

        return _metered(coro, add, self._rss)

    def grown(self, task_id: uuid.UUID) -> int:
        """Bytes of RSS the task's own steps added so far."""
        return self._grown.get(task_id, 0)

    def peak_mb(self, task_id: uuid.UUID) -> float | None:
        """The worker's highest RSS (MB) seen while the task ran (its steps, and each check)."""
        peak = self._peak.get(task_id)
        return None if peak is None else round(peak / MB, 1)

    def finished(self, task_id: uuid.UUID) -> str | None:
        """A task's attempt is over: why it was killed for memory, if it was."""
        self._grown.pop(task_id, None)
        self._peak.pop(task_id, None)
        return self._kills.pop(task_id, None)

    async def check(self) -> uuid.UUID | None:
        """One sample; cancels the task to blame when over budget (returns its id)."""
        if self._victim is not None:
            if not self._victim_gone(self._victim):
                return None
            self._reclaim(f"after killing task {self._victim.task_id}")
            self._victim = None
        now = self._rss()
        for task_id in self._peak:
            self._peak[task_id] = max(self._peak[task_id], now)
        over = now - self.baseline
        if over <= self.budget_mb * MB:
            return None
        blamed = self._blame()
        if blamed is None:  # no running task grew: memory kept from earlier, not a task's
            self._reclaim(f"{over / MB:.0f} MB over the baseline with no task to blame")
            return None
        task_id, growth = blamed
        message = (
            f"exceeded TASK_MAX_MEMORY_MB ({self.budget_mb} MB): its worker grew "
            f"{over / MB:.0f} MB above its baseline, {growth / MB:.0f} MB of it in this task"
        )
        body = self.running[task_id].body
        self._kills[task_id] = message
        self._victim = Kill(task_id, body)
        log.warning("memory_limit: cancelling task %s: %s", task_id, message)
        body.cancel()
        return task_id

    def _blame(self) -> tuple[uuid.UUID, int] | None:
        """The running task that grew most (a tie: the latest to start), if any grew."""
        best: tuple[uuid.UUID, int] | None = None
        for task_id, running in self.running.items():  # in the order they started
            growth = self._grown.get(task_id)
            if growth is None or running.body.done():
                continue
            if growth > 0 and (best is None or growth >= best[1]):
                best = (task_id, growth)
        return best

    def _victim_gone(self, victim: Kill) -> bool:
        """Whether the killed task's attempt is over; if its body still runs (it caught the
        cancellation), cancel it again."""
        if not victim.body.done():
            victim.body.cancel()
            return False
        return victim.task_id not in self._kills  # the runner has taken the kill

    def _reclaim(self, why: str) -> None:
        before = self._rss()
        self._release()  # in the loop's thread: finalizers may touch the loop
        self.baseline = self._rss()
        log.warning(
            "memory_limit: %s: released %.0f MB; new baseline %.0f MB",
            why,
            (before - self.baseline) / MB,
            self.baseline / MB,
        )
