"""When a schedule fires: a 5-field cron expression in an IANA time zone, or a fixed
interval in seconds.

Cron times come from cronsim rather than croniter: cronsim has no dependencies, ships type
hints, is released regularly (2.9, November 2026), and models its DST behaviour on Debian
cron, which is what cron users expect:
- a job at a fixed time (minute and hour given) that falls in the hour skipped when clocks
  go forward runs right after the jump, once; one in the hour repeated when they go back
  runs once, at its first occurrence;
- a job whose minute or hour is a wildcard (`*/15 * * * *`, `0 * * * *`) follows the real
  clock: it keeps its real-time spacing across both changes.
Intervals (`everySeconds`) are counted from an anchor (the schedule's creation) in real
time, whatever the zone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from taskrunner.errors import BadInput

EXAMPLE = '"*/5 * * * *" (every 5 minutes) or "0 9 * * 1-5" (9:00 on weekdays)'
MAX_ITERATIONS = 100_000  # ticks read while catching up, at most


@dataclass(frozen=True)
class Cadence:
    cron: str | None  # 5-field cron expression
    every_seconds: float | None  # interval in seconds (>= 1)
    timezone: str  # IANA name of cron's zone

    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def cadence(
    cron: str | None,
    every_seconds: float | None,
    timezone: str | None,
    *,
    prefix: str = "schedule.",
) -> Cadence:
    """A validated cadence, or BAD_INPUT naming the field and how to fix it."""
    if (cron is None) == (every_seconds is None):
        raise BadInput(
            f"{prefix}cron: give exactly one of cron (e.g. {EXAMPLE}) and everySeconds",
            field=f"{prefix}cron",
        )
    zone_name = "UTC" if timezone is None else timezone
    try:
        if not zone_name or zone_name != zone_name.strip():
            raise ValueError(zone_name)
        ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadInput(
            f"{prefix}timezone: {zone_name!r} is not an IANA time zone; use a name such as "
            '"UTC", "Europe/Berlin" or "America/New_York"',
            field=f"{prefix}timezone",
        ) from None
    if every_seconds is not None:
        if not math.isfinite(every_seconds) or every_seconds < 1:
            raise BadInput(
                f"{prefix}everySeconds: must be 1 or more, got {every_seconds}",
                field=f"{prefix}everySeconds",
            )
        return Cadence(None, float(every_seconds), zone_name)
    assert cron is not None
    expression = " ".join(cron.split())
    if len(expression.split()) != 5 or expression.startswith("@"):
        raise BadInput(
            f"{prefix}cron: {cron!r} is not a 5-field cron expression (minute hour "
            f"day-of-month month day-of-week); e.g. {EXAMPLE}",
            field=f"{prefix}cron",
        )
    try:
        next(CronSim(expression, datetime.now(UTC)))
    except (CronSimError, StopIteration) as exc:
        raise BadInput(
            f"{prefix}cron: {cron!r} is not a valid cron expression ({exc or 'it never fires'}); "
            f"e.g. {EXAMPLE}",
            field=f"{prefix}cron",
        ) from None
    return Cadence(expression, None, zone_name)


def next_tick(c: Cadence, after: datetime, anchor: datetime) -> datetime:
    """The first tick strictly after `after` (aware), in UTC."""
    if c.every_seconds is not None:
        step = c.every_seconds
        k = math.floor((after - anchor).total_seconds() / step) + 1
        tick = anchor + timedelta(seconds=k * step)
        while tick <= after:  # float rounding
            k += 1
            tick = anchor + timedelta(seconds=k * step)
        return tick.astimezone(UTC)
    assert c.cron is not None
    local = after.astimezone(c.zone())
    for tick in CronSim(c.cron, local):
        if tick.astimezone(UTC) > after:
            return tick.astimezone(UTC)
    raise ValueError(f"cron {c.cron!r} never fires after {after}")  # pragma: no cover


def ticks_between(
    c: Cadence, after: datetime, until: datetime, anchor: datetime, most: int
) -> list[datetime]:
    """Ticks t with after < t <= until, oldest first; the latest `most` when there are
    more."""
    if most <= 0 or until <= after:
        return []
    if c.every_seconds is not None:
        step = c.every_seconds
        last = math.floor((until - anchor).total_seconds() / step)
        first = math.floor((after - anchor).total_seconds() / step) + 1
        ks = range(max(first, last - most + 1), last + 1)
        ticks = [anchor + timedelta(seconds=k * step) for k in ks]
        return [t.astimezone(UTC) for t in ticks if after < t <= until]
    assert c.cron is not None
    found: list[datetime] = []
    for i, tick in enumerate(CronSim(c.cron, after.astimezone(c.zone()))):
        at = tick.astimezone(UTC)
        if at > until or i >= MAX_ITERATIONS:
            break
        if at > after:
            found.append(at)
            if len(found) > most:
                del found[0]
    return found
