"""Report progress and write log lines at a steady pace, for trying out live streams.

Its lines go through Python's `logging`, which a task's log captures like `ctx.log`.
"""

from __future__ import annotations

import asyncio
import logging

from pydantic import BaseModel, Field

from workers.task_context import TaskContext

NAME = "chatter"
log = logging.getLogger(__name__)


class Input(BaseModel):
    progress_steps: int = Field(default=10, ge=0, le=10_000, description="Progress reports.")
    log_lines: int = Field(default=10, ge=0, le=10_000, description="Log lines to write.")
    interval_seconds: float = Field(default=0.0, ge=0, le=10, description="Pause between steps.")


async def run(ctx: TaskContext, input: Input) -> dict[str, int]:
    steps, lines = input.progress_steps, input.log_lines
    for i in range(1, max(steps, lines) + 1):
        if i <= steps:
            await ctx.progress(i / steps, f"step {i} of {steps}")
        if i <= lines:
            log.info("line %d of %d", i, lines)
        await asyncio.sleep(input.interval_seconds)
    return {"progress_steps": steps, "log_lines": lines}
