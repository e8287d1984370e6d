"""What a running task can do: report progress, write log lines, know its attempt.

Everything a task reports goes through one ordered outbox per attempt and is written in
batches (one transaction for a burst), so a chatty task costs few transactions:
- progress is coalesced: at most one event per PROGRESS_INTERVAL_SECONDS, the latest wins;
- log lines (from `ctx.log` and from Python `logging` inside the task) are batched, and
  past MAX_LOG_LINES per attempt they are counted instead of recorded.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import journal
from taskrunner.artifacts import (
    ArtifactData,
    ArtifactQuotaExceeded,
    ArtifactStore,
    ArtifactTooLarge,
    Quota,
    add_artifact,
)
from taskrunner.config import Settings
from taskrunner.events import EventKind
from taskrunner.logs import event
from taskrunner.models import Artifact

LOG_LEVELS = frozenset({"debug", "info", "warning", "error"})
PROGRESS_INTERVAL_SECONDS = 0.1
MAX_LOG_LINES = 10_000
MAX_LINE_CHARS = 10_000
# Loggers of the machinery itself: never captured as a task's lines.
INTERNAL_LOGGERS = ("taskrunner", "workers.runner", "workers.background", "workers.memory",
                    "arq", "sqlalchemy", "asyncpg", "redis")  # fmt: skip

CURRENT: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "taskrunner_task", default=None
)


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
    _outbox: list[journal.Change] = field(default_factory=list)
    _pending_progress: journal.Change | None = None
    _last_progress: float = 0.0
    _lines: int = 0
    _dropped: int = 0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _flusher: asyncio.Task[None] | None = None

    async def progress(self, fraction: float, message: str | None = None) -> None:
        """Report progress in [0, 1] (clamped), with an optional message."""
        value = min(1.0, max(0.0, float(fraction)))
        self._pending_progress = journal.Change(
            self.task_id,
            EventKind.PROGRESS,
            {"progress": value, "message": message},
            values={"progress": value, "progress_message": message},
            expect_attempt=self.attempt,
        )
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
        except (ArtifactTooLarge, ArtifactQuotaExceeded) as exc:
            event("artifact_rejected", logging.WARNING, artifact=name, reason=exc.message)
            await self.log(f"artifact_rejected: {name}: {exc.message}", "error")
            raise

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
            journal.Change(
                self.task_id,
                EventKind.LOG,
                {"level": level, "line": line[:MAX_LINE_CHARS]},
                expect_attempt=self.attempt,
            )
        )
        self._schedule_flush(0)

    def _schedule_flush(self, delay: float) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._drain(delay))

    async def _drain(self, delay: float) -> None:
        """Flush after `delay`, and again while more arrived during a write."""
        await asyncio.sleep(delay)
        while True:
            await self.flush()
            if self._outbox:
                continue
            if self._pending_progress is None:
                return
            await asyncio.sleep(
                max(0.0, self._last_progress + PROGRESS_INTERVAL_SECONDS - time.monotonic())
            )

    async def flush(self) -> None:
        """Write everything queued, in order, in one transaction."""
        async with self._lock:
            changes, self._outbox = self._outbox, []
            if self._pending_progress is not None:
                changes.append(self._pending_progress)
                self._pending_progress = None
                self._last_progress = time.monotonic()
            if changes:
                await journal.apply(self.engine, self.redis, changes)

    async def close(self) -> None:
        """Flush what is left (the runner calls it before the final status)."""
        if self._dropped:
            self._outbox.append(
                journal.Change(
                    self.task_id,
                    EventKind.LOG,
                    {
                        "level": "warning",
                        "line": f"{self._dropped} more log lines were not recorded "
                        f"(at most {MAX_LOG_LINES} per attempt)",
                    },
                    expect_attempt=self.attempt,
                )
            )
            self._dropped = 0
        if self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)  # never cancel a write half-way
        await asyncio.shield(self.flush())


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
