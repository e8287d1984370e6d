"""Sleep for a number of seconds, reporting progress each second.

Bounded by TASK_MAX_RUNTIME_SECONDS. Cancelled, it logs how long it slept and stops. With
`blocking: true` it calls time.sleep in a child process (a process task): a body that blocks,
which its timeout and a cancel still end.
"""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from workers.child import ProcessContext
from workers.task_context import TaskContext

NAME = "sleep"
# A static ceiling, published in the JSON Schema; TASK_MAX_RUNTIME_SECONDS (checked at
# validation, usually lower) is the one that applies.
MAX_SECONDS = 86_400


class Input(BaseModel):
    seconds: float = Field(
        ge=0, le=MAX_SECONDS, description="How long to sleep, 0 to TASK_MAX_RUNTIME_SECONDS."
    )
    blocking: bool = Field(
        default=False,
        description="Sleep with time.sleep in a child process (a process task): timeout and "
        "cancel end it with SIGTERM, then SIGKILL.",
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


def in_process(input: Input) -> bool:
    """`blocking: true` runs `run_in_process` in a child process."""
    return input.blocking


def run_in_process(ctx: ProcessContext, input: Input) -> dict[str, float]:
    """time.sleep, a second at a time, reporting progress: blocking, as a C call would be."""
    started = time.monotonic()
    try:
        while (elapsed := time.monotonic() - started) < input.seconds:
            time.sleep(min(1.0, input.seconds - elapsed))
            done = min(time.monotonic() - started, input.seconds)
            ctx.progress(done / input.seconds, f"slept {done:.0f}s of {input.seconds:g}s")
    except BaseException:  # SIGTERM (its timeout, a cancel) raises in the body
        ctx.log(f"stopped after {time.monotonic() - started:.1f}s")
        raise
    return {"slept": input.seconds}
