"""Allocate memory 1 MiB at a time and keep it, for testing TASK_MAX_MEMORY_MB."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, Field

from workers.task_context import TaskContext

NAME = "memoryHog"
MIB = 1024 * 1024


class Input(BaseModel):
    megabytes: int = Field(ge=1, le=4096, description="MiB to allocate and hold.")
    pause_seconds: float = Field(default=0.01, ge=0, le=1, description="Pause after each MiB.")


async def run(ctx: TaskContext, input: Input) -> dict[str, int]:
    chunks: list[bytearray] = []
    for _ in range(input.megabytes):
        chunks.append(bytearray(MIB))  # zero-filled: every page is touched, so it is resident
        await asyncio.sleep(input.pause_seconds)
    return {"megabytes": len(chunks)}
