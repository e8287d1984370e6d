"""Backoff grows, has jitter, and is capped."""

from __future__ import annotations

import itertools
import random

import pytest

from taskrunner.retries import RetryPolicy, backoff, retries_left


def test_waits_grow_strictly_with_jitter_until_the_cap() -> None:
    policy = RetryPolicy(max_retries=10, backoff_seconds=0.5, max_backoff_seconds=30)
    rng = random.Random(7)
    for _ in range(200):
        waits = [backoff(policy, n, rng) for n in range(1, 7)]
        assert all(a < b for a, b in itertools.pairwise(waits))
        assert all(
            0.5 * 2 ** (n - 1) <= w <= 0.5 * 2 ** (n - 1) * 1.25
            for n, w in enumerate(waits, start=1)
        )
    assert backoff(policy, 20, rng) == 30
    assert len({round(backoff(policy, 3, rng), 6) for _ in range(50)}) > 40  # jitter


@pytest.mark.parametrize(
    ("max_retries", "attempts", "left"), [(0, 1, False), (1, 1, True), (1, 2, False), (3, 3, True)]
)
def test_retries_left_counts_attempts(max_retries: int, attempts: int, left: bool) -> None:
    assert retries_left(max_retries, attempts) is left


def test_a_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)


class Transient(Exception):
    pass


class Refused(Exception):
    retryable = False


def test_which_failures_retry() -> None:
    from taskrunner.fetch import FetchRefused
    from taskrunner.retries import NonRetryable, retryable

    anything = RetryPolicy(max_retries=3)
    only_transient = RetryPolicy(max_retries=3, retry_on=(Transient,))
    assert retryable(anything, ValueError("x")) and retryable(anything, Transient())
    assert not retryable(anything, NonRetryable("bad"))  # the documented exception
    assert not retryable(anything, Refused()) and not retryable(anything, FetchRefused("x"))
    assert retryable(only_transient, Transient())
    assert not retryable(only_transient, ValueError("x"))  # not listed
    assert not retryable(only_transient, type("T", (Transient,), {"retryable": False})())
    assert NonRetryable("x", code="BAD_INPUT").code == "BAD_INPUT"
    with pytest.raises(ValueError, match="retry_on"):
        RetryPolicy(retry_on=(ValueError, "nope"))  # type: ignore[arg-type]
