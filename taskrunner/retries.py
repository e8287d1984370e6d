"""Retry policy: how many times a failed task runs again, and how long it waits. Pure."""

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

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.backoff_seconds <= 0 or self.max_backoff_seconds <= 0:
            raise ValueError("RetryPolicy needs max_retries >= 0 and positive backoffs")


def backoff(policy: RetryPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): exponential with
    jitter in [1, 1 + JITTER), so waits grow strictly until the cap."""
    base = policy.backoff_seconds * 2 ** (attempt - 1)
    jitter = 1 + JITTER * (rng or random).random()
    return float(min(policy.max_backoff_seconds, base * jitter))


def retries_left(max_retries: int, attempts: int) -> bool:
    """Whether a task that has run `attempts` times may run again after a failure."""
    return attempts <= max_retries
