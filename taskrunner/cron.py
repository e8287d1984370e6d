"""When a schedule fires: a 5-field cron expression in an IANA time zone, or a fixed
interval in seconds. Pure: no I/O, no clock (callers pass every instant).

Cron times come from cronsim rather than croniter: cronsim has no dependencies, ships type
hints (py.typed), is released regularly (2.8 and 2.9 in November 2026), and models its DST
behaviour on Debian cron, which is what cron users expect. Its rules, as used here:
- a job at a fixed time (neither the minute nor the hour field starts with `*`: `30 2 * * *`,
  `0 9 * * 1-5`, `0 1-3 * * *`) that falls in the hour skipped when clocks go forward fires
  once, at the first instant after the jump (02:30 -> 03:00); several such times of one
  jump, and a time at the jump itself, merge into that one tick. One in the hour repeated
  when clocks go back fires once, at its first occurrence (summer time);
- a job whose minute or hour field starts with `*` (`*/15 * * * *`, `0 * * * *`,
  `0 */2 * * *`) follows the real clock: it keeps its real-time spacing across both
  changes, so it fires again in a repeated hour and not at all at wall times that were
  skipped (`0 */2 * * *` has no 02:00 on a spring-forward night in Berlin; `0 * * * *`
  still fires every real hour).
cronsim also takes Quartz-style `L`, `LW`, `5L` and `MON#2`, and names (`JAN`, `MON`);
it has no `@hourly`-style nicknames, and we refuse its 6-field (seconds) form: cron here
counts minutes, sub-minute cadences are `everySeconds`.

Intervals (`everySeconds`) are a fixed grid from an anchor (the schedule's creation):
anchor + k * every, k >= 1, in real time whatever the zone.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, available_timezones

from cronsim import CronSim, CronSimError

from taskrunner.errors import BadInput

EXAMPLE = '"*/5 * * * *" (every 5 minutes) or "0 9 * * 1-5" (9:00 on weekdays)'
# cron's nicknames, which cronsim does not read: the message gives their 5 fields
NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
RANGES = (
    "minute 0-59, hour 0-23, day of month 1-31 (or L), month 1-12 (or JAN-DEC), "
    "day of week 0-7 (or SUN-SAT; 0 and 7 are Sunday)"
)
# An interval longer than this is surely a mistake, and `anchor + k * every` would leave
# datetime's range (year 9999) for some anchors. Calendar cadences are cron's job.
MAX_EVERY_SECONDS = 10 * 366 * 86_400
# Any instant serves to check that an expression fires at all (cronsim looks 50 years on);
# a fixed one keeps `cadence` free of the clock.
_PROBE = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Cadence:
    cron: str | None  # 5-field cron expression, fields separated by one space
    every_seconds: float | None  # interval in seconds (>= 1)
    timezone: str  # IANA name of cron's zone ("UTC" when none was given)

    def zone(self) -> tzinfo:
        """The zone to read cron in. UTC needs no tz database (nor cronsim's DST rules)."""
        return UTC if self.timezone == "UTC" else ZoneInfo(self.timezone)


@functools.cache
def _zone_names() -> frozenset[str]:
    # "localtime" is the machine's own zone (a link to /etc/localtime), not an IANA name:
    # a schedule in it would fire at different times on different machines.
    return frozenset(available_timezones() - {"localtime"})


def cadence(
    cron: str | None,
    every_seconds: float | None,
    timezone: str | None,
    *,
    prefix: str = "schedule.",
) -> Cadence:
    """A validated cadence, or BAD_INPUT naming the field and saying how to fix it.

    The zone is checked against the IANA names of the tz database (not by opening a file:
    `ZoneInfo` also opens "localtime" or "posixrules"), and even for everySeconds, which
    ignores it, so that what is stored is always a zone a later cron edit can use."""
    if (cron is None) == (every_seconds is None):
        raise BadInput(
            f"{prefix}cron: give exactly one of cron (e.g. {EXAMPLE}) and everySeconds "
            "(e.g. 60), not both and not neither",
            field=f"{prefix}cron",
        )
    zone_name = "UTC" if timezone is None else timezone
    if zone_name != "UTC" and zone_name not in _zone_names():
        raise BadInput(
            f"{prefix}timezone: {zone_name!r} is not an IANA time zone; use a name such as "
            '"UTC", "Europe/Berlin" or "America/New_York" (case matters), or leave it out '
            "for UTC",
            field=f"{prefix}timezone",
        )
    if every_seconds is not None:
        if not math.isfinite(every_seconds) or not 1 <= every_seconds <= MAX_EVERY_SECONDS:
            raise BadInput(
                f"{prefix}everySeconds: must be 1 or more (seconds), and at most "
                f"{MAX_EVERY_SECONDS} (10 years), got {every_seconds}; for a calendar "
                f"cadence use cron, e.g. {EXAMPLE}",
                field=f"{prefix}everySeconds",
            )
        return Cadence(None, float(every_seconds), zone_name)
    assert cron is not None
    return Cadence(_expression(cron, f"{prefix}cron"), None, zone_name)


def _expression(cron: str, field: str) -> str:
    """The expression with single spaces, or BAD_INPUT saying what is wrong with it."""
    fields = cron.split()
    expression = " ".join(fields)
    if expression.startswith("@"):
        fix = NICKNAMES.get(expression.lower())
        hint = f'; write its 5 fields instead: "{fix}"' if fix else f"; e.g. {EXAMPLE}"
        raise BadInput(
            f"{field}: {cron!r}: cron nicknames such as @daily or @reboot are not taken{hint}",
            field=field,
        )
    if len(fields) != 5:
        seconds = (
            "; cron here has no seconds field: for a cadence under a minute use everySeconds"
            if len(fields) == 6
            else ""
        )
        raise BadInput(
            f"{field}: {cron!r} has {len(fields)} fields, cron takes 5 (minute hour "
            f"day-of-month month day-of-week){seconds}; e.g. {EXAMPLE}",
            field=field,
        )
    try:
        next(CronSim(expression, _PROBE))
    except CronSimError as exc:  # cronsim says which field: "Bad minute"
        raise BadInput(
            f"{field}: {cron!r} is not a valid cron expression ({str(exc).lower()}); the "
            f"fields take {RANGES}; e.g. {EXAMPLE}",
            field=field,
        ) from None
    except StopIteration:
        raise BadInput(
            f"{field}: {cron!r} never fires (no such date); e.g. {EXAMPLE}", field=field
        ) from None
    return expression


def _aware(name: str, at: datetime) -> None:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime, got {at!r}")


def _cron_ticks(c: Cadence, after: datetime) -> Iterator[datetime]:
    """The cron ticks strictly after `after`, in UTC, in order (until cronsim finds none in
    50 years).

    cronsim starts one second after its start, so it yields only later ticks; with the
    DST fix-up of fixed-time jobs it runs on naive local time, where an instant in a
    repeated hour reads as the first pass: ticks it yields at or before `after` are dropped
    (the first pass of a repeated hour has gone by then)."""
    assert c.cron is not None
    for tick in CronSim(c.cron, after.astimezone(c.zone())):
        at = tick.astimezone(UTC)
        if at > after:
            yield at


def next_tick(c: Cadence, after: datetime, anchor: datetime) -> datetime:
    """The first tick strictly after `after` (aware), in UTC. `anchor` (aware) places the
    grid of everySeconds; cron ignores it."""
    _aware("after", after)
    if c.every_seconds is not None:
        _aware("anchor", anchor)
        step = c.every_seconds
        k = max(1, math.floor((after - anchor).total_seconds() / step) + 1)
        tick = _grid(anchor, k, step)
        while tick <= after:  # the division rounded down a tick too far
            k += 1
            tick = _grid(anchor, k, step)
        return tick
    for tick in _cron_ticks(c, after):
        return tick
    raise ValueError(f"cron {c.cron!r} never fires after {after}")  # pragma: no cover


def _grid(anchor: datetime, k: int, step: float) -> datetime:
    """Tick k of an interval; next_tick and ticks_between both compute it here, so a tick
    is the same instant (to the microsecond) whichever found it."""
    return (anchor + timedelta(seconds=k * step)).astimezone(UTC)


def ticks_between(
    c: Cadence, after: datetime, until: datetime, anchor: datetime, most: int
) -> list[datetime]:
    """Ticks t with after < t <= until, oldest first, in UTC; the latest `most` when there
    are more (a catch-up fires the most recent missed ticks).

    The work is bounded by `most`, not by the length of the gap: intervals are computed;
    cron is iterated only over the end of the gap, a window growing 8-fold from an hour
    until it holds `most` ticks or reaches `after` (a year of `* * * * *` is not walked)."""
    _aware("after", after)
    _aware("until", until)
    if most <= 0 or until <= after:
        return []
    if c.every_seconds is not None:
        _aware("anchor", anchor)
        step = c.every_seconds
        # a tick either side of the estimates: the float division may round either way
        last = math.floor((until - anchor).total_seconds() / step) + 1
        first = max(1, math.floor((after - anchor).total_seconds() / step))
        ks = range(max(first, last - most - 1), last + 1)
        ticks = [t for t in (_grid(anchor, k, step) for k in ks) if after < t <= until]
        return ticks[-most:]
    window = timedelta(hours=1)
    while True:
        start = after if window >= until - after else until - window
        found: deque[datetime] = deque(maxlen=most)
        for tick in _cron_ticks(c, start):
            if tick > until:
                break
            found.append(tick)
        if len(found) == most or start == after:
            return list(found)
        window *= 8
