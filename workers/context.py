"""What a running task can do: report progress, write log lines, know its attempt."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import journal
from taskrunner.config import Settings
from taskrunner.events import EventKind

LOG_LEVELS = frozenset({"debug", "info", "warning", "error"})


@dataclass
class TaskContext:
    """Handed to a task's `run(ctx, input)`. Cancellation reaches the task as
    `asyncio.CancelledError` at its next `await`: catch it to clean up, then re-raise."""

    task_id: uuid.UUID
    attempt: int
    settings: Settings
    engine: AsyncEngine
    redis: Redis

    async def progress(self, fraction: float, message: str | None = None) -> None:
        """Report progress in [0, 1] (clamped), with an optional message."""
        value = min(1.0, max(0.0, float(fraction)))
        await journal.apply_one(
            self.engine,
            self.redis,
            journal.Change(
                self.task_id,
                EventKind.PROGRESS,
                {"progress": value, "message": message},
                values={"progress": value, "progress_message": message},
            ),
        )

    async def log(self, line: str, level: str = "info") -> None:
        """Append a log line (level: debug, info, warning or error)."""
        if level not in LOG_LEVELS:
            raise ValueError(f"level must be one of {sorted(LOG_LEVELS)}, not {level!r}")
        await journal.apply_one(
            self.engine,
            self.redis,
            journal.Change(self.task_id, EventKind.LOG, {"level": level, "line": line}),
        )
