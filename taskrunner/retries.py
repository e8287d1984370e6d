"""Retry policy: how many times a failed task runs again, how long it waits, and which
failures never retry. Pure."""

from __future__ import annotations

import random
from dataclasses import dataclass

JITTER = 0.25  # each wait is stretched by up to 25%: spread out, yet still growing


@dataclass(frozen=True)
class RetryPolicy:
    """A task type's default (`RETRY` in its module); `maxRetries` overrides per task."""

    max_retries: int = 0
    backoff_seconds: float = 1.0  # the wait before the first retry
    max_backoff_seconds: float = 300.0
    # Only failures raising one of these retry (None: any failure but a NonRetryable one).
    retry_on: tuple[type[BaseException], ...] | None = None

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.backoff_seconds <= 0 or self.max_backoff_seconds <= 0:
            raise ValueError("RetryPolicy needs max_retries >= 0 and positive backoffs")
        if self.retry_on is not None and not all(
            isinstance(e, type) and issubclass(e, BaseException) for e in self.retry_on
        ):
            raise ValueError("RetryPolicy.retry_on must be a tuple of exception classes")


class NonRetryable(Exception):
    """Raise it (or a subclass) from a task body to fail without any retry, whatever
    maxRetries says: the input is wrong, the target refused for good. `code` (an
    UPPER_SNAKE TaskErrorCode name) is recorded as the error's code, TASK_ERROR by default.
    Any exception class with `retryable = False` behaves the same
    (`taskrunner.fetch.FetchRefused` is one)."""

    retryable = False

    def __init__(self, message: str = "", *, code: str = "TASK_ERROR") -> None:
        super().__init__(message)
        self.code = code


def retryable(policy: RetryPolicy, exc: BaseException) -> bool:
    """Whether a failure raising `exc` may retry: not when the exception (or its class) says
    `retryable = False`, nor, when the policy lists `retry_on`, when it is none of them."""
    if getattr(exc, "retryable", True) is False:
        return False
    return policy.retry_on is None or isinstance(exc, policy.retry_on)


def backoff(policy: RetryPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): exponential with
    jitter in [1, 1 + JITTER), so waits grow strictly until the cap."""
    base = policy.backoff_seconds * 2 ** (attempt - 1)
    jitter = 1 + JITTER * (rng or random).random()
    return float(min(policy.max_backoff_seconds, base * jitter))


def retries_left(max_retries: int, attempts: int) -> bool:
    """Whether a task that has run `attempts` times may run again after a failure."""
    return attempts <= max_retries
