"""Sleep for a number of seconds, reporting progress each second.

Bounded by TASK_MAX_RUNTIME_SECONDS. Cancelled, it logs how long it slept and stops.
"""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from workers.task_context import TaskContext

NAME = "sleep"
# A static ceiling, published in the JSON Schema; TASK_MAX_RUNTIME_SECONDS (checked at
# validation, usually lower) is the one that applies.
MAX_SECONDS = 86_400


class Input(BaseModel):
    seconds: float = Field(
        ge=0, le=MAX_SECONDS, description="How long to sleep, 0 to TASK_MAX_RUNTIME_SECONDS."
    )

    @field_validator("seconds")
    @classmethod
    def _within_runtime_limit(cls, value: float, info: ValidationInfo) -> float:
        limit = (info.context or {}).get("max_runtime_seconds")
        if limit is not None and value > limit:
            raise ValueError(f"must be at most TASK_MAX_RUNTIME_SECONDS ({limit})")
        return value


async def run(ctx: TaskContext, input: Input) -> dict[str, float]:
    started = time.monotonic()
    try:
        while (elapsed := time.monotonic() - started) < input.seconds:
            await asyncio.sleep(min(1.0, input.seconds - elapsed))
            done = min(time.monotonic() - started, input.seconds)
            await ctx.progress(done / input.seconds, f"slept {done:.0f}s of {input.seconds:g}s")
    except asyncio.CancelledError:
        await ctx.log(f"cancelled after {time.monotonic() - started:.1f}s; cleaned up")
        raise
    return {"slept": input.seconds}
