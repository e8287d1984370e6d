"""Fail on purpose: raise for the first `failTimes` attempts, then succeed.

For trying out error handling (and, with maxRetries, the retry policy; with
`retryable: false`, a failure that never retries).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from taskrunner.retries import NonRetryable, RetryPolicy
from workers.task_context import TaskContext

NAME = "fail"
RETRY = RetryPolicy(max_retries=0, backoff_seconds=0.5, max_backoff_seconds=30)


class TaskFailedOnPurpose(Exception):
    """The error this task raises."""


class TaskFailedForGood(NonRetryable):
    """The error this task raises with `retryable: false`: it is never retried."""


class Input(BaseModel):
    message: str = Field(default="failed on purpose", max_length=10_000)
    fail_times: int = Field(
        default=1, ge=0, le=1000, description="Attempts that fail before one succeeds."
    )
    retryable: bool = Field(
        default=True,
        description="false: the failure raises NonRetryable, and no retry follows whatever "
        "maxRetries says.",
    )


async def run(ctx: TaskContext, input: Input) -> dict[str, int]:
    if ctx.attempt <= input.fail_times:
        if not input.retryable:
            raise TaskFailedForGood(f"{input.message} (attempt {ctx.attempt})")
        raise TaskFailedOnPurpose(f"{input.message} (attempt {ctx.attempt})")
    return {"succeeded_on_attempt": ctx.attempt}
