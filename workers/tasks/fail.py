"""Fail on purpose: raise for the first `failTimes` attempts, then succeed.

For trying out error handling (and, with maxRetries, the retry policy).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from taskrunner.retries import RetryPolicy
from workers.task_context import TaskContext

NAME = "fail"
RETRY = RetryPolicy(max_retries=0, backoff_seconds=0.5, max_backoff_seconds=30)


class TaskFailedOnPurpose(Exception):
    """The error this task raises."""


class Input(BaseModel):
    message: str = Field(default="failed on purpose", max_length=10_000)
    fail_times: int = Field(
        default=1, ge=0, le=1000, description="Attempts that fail before one succeeds."
    )


async def run(ctx: TaskContext, input: Input) -> dict[str, int]:
    if ctx.attempt <= input.fail_times:
        raise TaskFailedOnPurpose(f"{input.message} (attempt {ctx.attempt})")
    return {"succeeded_on_attempt": ctx.attempt}
