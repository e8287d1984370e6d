"""What a running task can do: report progress, write log lines, know its attempt.

Everything a task reports goes through one ordered outbox per attempt and is written in
batches (one transaction for a burst), so a chatty task costs few transactions:
- progress is coalesced: at most one event per PROGRESS_INTERVAL_SECONDS, the latest wins;
- log lines (from `ctx.log` and from Python `logging` inside the task) are batched, and
  past MAX_LOG_LINES per attempt they are counted instead of recorded.

While PostgreSQL cannot be reached (a restart) the outbox keeps what it could not write, in
order, and writes it once it can: the task goes on, it is not failed by its progress
report. A write refused because the attempt moved on (another worker's reconciler
recovered it, it was queued again) trips the attempt's `Fence`: its body is cancelled at
once, and nothing more of the attempt is written.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import journal, transitions
from taskrunner.artifacts.quotas import ArtifactQuotaExceeded, Quota
from taskrunner.artifacts.records import add_artifact
from taskrunner.artifacts.storage import ArtifactStore
from taskrunner.artifacts.streams import ArtifactData, ArtifactTooLarge
from taskrunner.changes import Change
from taskrunner.config import Settings
from taskrunner.db import unavailable
from taskrunner.errors import Conflict
from taskrunner.events import EventKind
from taskrunner.logs import event
from taskrunner.models import Artifact
from workers import subtasks

LOG_LEVELS = frozenset({"debug", "info", "warning", "error"})
PROGRESS_INTERVAL_SECONDS = 0.1
RETRY_SECONDS = (0.1, 2.0)  # backoff between writes while PostgreSQL is away: first, most
MAX_LOG_LINES = 10_000
MAX_LINE_CHARS = 10_000
# Loggers of the machinery itself: never captured as a task's lines.
INTERNAL_LOGGERS = ("taskrunner", "workers.runner", "workers.background", "workers.memory",
                    "workers.processes", "arq", "sqlalchemy", "asyncpg", "redis")  # fmt: skip

CURRENT: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "taskrunner_task", default=None
)


@dataclass
class Fence:
    """One attempt's: tripped when a write of it is refused because the attempt moved on
    (recovered by another worker's reconciler, queued again, ended). The body is then
    cancelled at once, and the runner records no outcome for it: the task belongs to
    whoever moved it on."""

    body: asyncio.Task[Any] | None = None
    tripped: bool = False

    def trip(self) -> None:
        if not self.tripped:
            self.tripped = True
            event("attempt_fenced", logging.WARNING)
        if self.body is not None and not self.body.done():
            self.body.cancel()


@dataclass
class TaskContext:
    """Handed to a task's `run(ctx, input)`. Cancellation reaches the task as
    `asyncio.CancelledError` at its next `await`: catch it to clean up, then re-raise."""

    task_id: uuid.UUID
    attempt: int
    settings: Settings
    engine: AsyncEngine
    redis: Redis
    store: ArtifactStore
    fence: Fence = field(default_factory=Fence)
    # a workflow's step: its parents' results, by step key (empty for other tasks)
    parent_results: dict[str, Any] = field(default_factory=dict)
    _outbox: list[Change] = field(default_factory=list)
    _pending_progress: Change | None = None
    _last_progress: float = 0.0
    _lines: int = 0
    _dropped: int = 0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _flusher: asyncio.Task[None] | None = None
    _unsent_since: float | None = None  # the first write that could not reach PostgreSQL
    _closing: bool = False  # close() retries what is left: the flusher stops retrying

    async def progress(self, fraction: float, message: str | None = None) -> None:
        """Report progress in [0, 1] (clamped), with an optional message."""
        value = min(1.0, max(0.0, float(fraction)))
        self._pending_progress = transitions.progressed(self.task_id, self.attempt, value, message)
        wait = self._last_progress + PROGRESS_INTERVAL_SECONDS - time.monotonic()
        if wait <= 0:
            await self.flush()
        else:
            self._schedule_flush(wait)

    async def log(self, line: str, level: str = "info") -> None:
        """Append a log line (level: debug, info, warning or error)."""
        if level not in LOG_LEVELS:
            raise ValueError(f"level must be one of {sorted(LOG_LEVELS)}, not {level!r}")
        self.add_line(line, level)
        await self.flush()

    async def artifact(
        self, name: str, data: ArtifactData, content_type: str = "application/octet-stream"
    ) -> Artifact:
        """Store a file the task produced: `data` is bytes, a Path, or an async iterator of
        bytes (streamed, never read whole). Past TASK_MAX_ARTIFACT_MB it raises
        ArtifactTooLarge, past MAX_ARTIFACTS_PER_TASK or OWNER_MAX_ARTIFACT_MB
        ArtifactQuotaExceeded; either logs `artifact_rejected` and keeps nothing. A name
        of `.` or `..` is BadInput."""
        await self.flush()  # what the task logged before comes first
        try:
            return await add_artifact(
                engine=self.engine,
                redis=self.redis,
                store=self.store,
                task_id=self.task_id,
                name=name,
                data=data,
                content_type=content_type,
                max_bytes=int(self.settings.task_max_artifact_mb * 1024 * 1024),
                expect_attempt=self.attempt,
                quota=Quota.of(self.settings),
            )
        except Conflict:  # the attempt moved on: refused, and the body stops
            self.fence.trip()
            raise
        except (ArtifactTooLarge, ArtifactQuotaExceeded) as exc:
            event("artifact_rejected", logging.WARNING, artifact=name, reason=exc.message)
            await self.log(f"artifact_rejected: {name}: {exc.message}", "error")
            raise

    async def submit(
        self,
        spec: Mapping[str, Any],
        options: Mapping[str, Any] | None = None,
        *,
        detached: bool = False,
    ) -> uuid.UUID:
        """Submit a child task: `spec` is {type name: input} as submitTask's `task`,
        `options` submitTask's (camelCase or snake_case). It has this task's owner and
        `parentId`; cancelling this task cancels it unless `detached`. Its id. See
        workers.subtasks."""
        return await subtasks.submit(self, spec, options, detached=detached)

    async def wait(self, children: Iterable[uuid.UUID | str]) -> list[subtasks.ChildResult]:
        """Wait for children (ids from `submit`) to end; how each ended, in order. This
        task holds its worker slot (and its timeout runs) meanwhile."""
        return await subtasks.wait(self, children)

    @property
    def lines(self) -> int:
        """Log lines recorded (or dropped) in this attempt so far."""
        return self._lines + self._dropped

    def add_line(self, line: str, level: str) -> None:
        """Queue a log line without waiting (what the logging handler uses)."""
        if self._lines >= MAX_LOG_LINES:
            self._dropped += 1
            return
        self._lines += 1
        self._outbox.append(
            transitions.log_line(self.task_id, self.attempt, level, line[:MAX_LINE_CHARS])
        )
        self._schedule_flush(0)

    def _schedule_flush(self, delay: float) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._drain(delay))

    async def _drain(self, delay: float) -> None:
        """Flush after `delay`, and again while more arrived during a write (later, with
        backoff, while PostgreSQL cannot be reached)."""
        await asyncio.sleep(delay)
        wait = RETRY_SECONDS[0]
        while True:
            if not await self.flush():
                if self._closing:
                    return
                await asyncio.sleep(wait)
                wait = min(2 * wait, RETRY_SECONDS[1])
                continue
            wait = RETRY_SECONDS[0]
            if self._outbox:
                continue
            if self._pending_progress is None:
                return
            await asyncio.sleep(
                max(0.0, self._last_progress + PROGRESS_INTERVAL_SECONDS - time.monotonic())
            )

    async def flush(self) -> bool:
        """Write everything queued, in order, in one transaction. False when PostgreSQL
        could not be reached: the changes stay queued (a later flush writes them) until
        WORKER_WRITE_RETRY_SECONDS after the first such failure, when they are dropped."""
        async with self._lock:
            changes, self._outbox = self._outbox, []
            if self._pending_progress is not None:
                changes.append(self._pending_progress)
                self._pending_progress = None
                self._last_progress = time.monotonic()
            if not changes or self.fence.tripped:  # a fenced attempt writes nothing more
                return True
            try:
                outcomes = await journal.apply(self.engine, self.redis, changes)
            except Exception as exc:
                if not unavailable(exc):
                    raise
                return self._keep(changes)
            self._unsent_since = None
            if not all(o.accepted for o in outcomes):
                self.fence.trip()
            return True

    def _keep(self, changes: list[Change]) -> bool:
        """Put back what PostgreSQL did not take, ahead of what came meanwhile (the newest
        progress wins); give it up once it waited WORKER_WRITE_RETRY_SECONDS."""
        now = time.monotonic()
        if self._unsent_since is None:
            self._unsent_since = now
        if now - self._unsent_since >= self.settings.worker_write_retry_seconds:
            event("task_lines_dropped", logging.WARNING, changes=len(changes))
            self._unsent_since = None
            return True
        self._outbox[:0] = [c for c in changes if c.kind is not EventKind.PROGRESS]
        if self._pending_progress is None:
            progress = [c for c in changes if c.kind is EventKind.PROGRESS]
            self._pending_progress = progress[-1] if progress else None
        self._schedule_flush(RETRY_SECONDS[0])
        return False

    async def close(self) -> None:
        """Flush what is left (the runner calls it before the final status); while
        PostgreSQL cannot be reached, again with backoff (bounded as `flush` is; not at all
        when the worker is stopping)."""
        if self._dropped:
            self._outbox.append(
                transitions.log_line(
                    self.task_id,
                    self.attempt,
                    "warning",
                    f"{self._dropped} more log lines were not recorded "
                    f"(at most {MAX_LOG_LINES} per attempt)",
                )
            )
            self._dropped = 0
        self._closing = True
        if self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)  # never cancel a write half-way
        wait = RETRY_SECONDS[0]
        while not await asyncio.shield(self.flush()):
            current = asyncio.current_task()
            if current is not None and current.cancelling():  # the worker is stopping
                event("task_lines_dropped", logging.WARNING, changes=len(self._outbox))
                return
            await asyncio.sleep(wait)
            wait = min(2 * wait, RETRY_SECONDS[1])


class TaskLogHandler(logging.Handler):
    """Records logged while a task runs (in its asyncio context) become its log lines."""

    def emit(self, record: logging.LogRecord) -> None:
        ctx = CURRENT.get()
        if ctx is None or record.name.startswith(INTERNAL_LOGGERS):
            return
        try:
            line = self.format(record)
            ctx.add_line(line, _level(record.levelno))
        except Exception:
            self.handleError(record)


def _level(levelno: int) -> str:
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    return "info" if levelno >= logging.INFO else "debug"


def install_log_capture() -> None:
    """Attach the capturing handler to the root logger once; let task loggers through."""
    root = logging.getLogger()
    if not any(isinstance(h, TaskLogHandler) for h in root.handlers):
        handler = TaskLogHandler(level=logging.DEBUG)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    logging.getLogger("workers.tasks").setLevel(logging.INFO)


async def run_with_context(ctx: TaskContext, start: Callable[[], Awaitable[Any]]) -> Any:
    """Run the task's coroutine (made only now, so a body cancelled before it starts leaves
    no never-awaited coroutine) with `ctx` as the current task, for log capture."""
    CURRENT.set(ctx)
    return await start()
