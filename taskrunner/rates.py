"""Execution rate limits of task types: `RATE_LIMIT = "10/second"` in a task module, or a
task's `options.rateLimit`. The text is parsed here (the `limits` library's notation:
"10/second", "100/minute", "5 per 2 seconds"); how starts are held to it is
`taskrunner.ratelimit`'s business."""

from __future__ import annotations

from dataclasses import dataclass

import limits

RATE_RULE = 'N/second, N/minute, N/hour or "N per K seconds" (N >= 1)'


@dataclass(frozen=True)
class Rate:
    """At most `amount` starts in any `period_seconds`."""

    amount: int
    period_seconds: int

    def __str__(self) -> str:
        return f"{self.amount} per {self.period_seconds} seconds"


def parse_rate(text: str) -> Rate:
    """The rate `text` says, or ValueError naming the notation."""
    try:
        item = limits.parse(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a rate: write {RATE_RULE}") from None
    if item.amount < 1 or item.get_expiry() < 1:
        raise ValueError(f"{text!r} is not a rate: write {RATE_RULE}")
    return Rate(int(item.amount), int(item.get_expiry()))
