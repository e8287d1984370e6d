"""When schedules fire (taskrunner.cron): a table of next ticks across the DST changes of
Europe/Berlin and America/New_York, the interval arithmetic, catch-up windows, and the
BAD_INPUT of every malformed cadence.

2026's changes: Berlin springs forward on 29 March (02:00 CET -> 03:00 CEST, 01:00 UTC) and
falls back on 25 October (03:00 CEST -> 02:00 CET, 01:00 UTC); New York springs forward on
8 March (02:00 EST -> 03:00 EDT, 07:00 UTC) and falls back on 1 November (02:00 EDT ->
01:00 EST, 06:00 UTC). Expected values are worked out from those rules, not read from
cronsim.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from taskrunner.cron import Cadence, cadence, next_tick, ticks_between
from taskrunner.errors import BadInput


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


ANCHOR = utc("2026-01-01T00:00:00")

# (cron, zone, after (UTC), the next tick (UTC))
CRON_TABLE = [
    # a fixed time in the hour Berlin skips: once, right after the jump (03:00 CEST)
    ("30 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00", "2026-03-29T01:00:00"),
    # ... and the day after, 02:30 CEST again
    ("30 2 * * *", "Europe/Berlin", "2026-03-29T01:00:00", "2026-03-30T00:30:00"),
    # a fixed time in the hour Berlin repeats: once, at its first occurrence (CEST) ...
    ("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00", "2026-10-25T00:30:00"),
    # ... and not at the second (02:30 CET, 01:30 UTC): next is the 26th, 02:30 CET
    ("30 2 * * *", "Europe/Berlin", "2026-10-25T00:30:00", "2026-10-26T01:30:00"),
    # hourly keeps real-time hours across both changes
    ("0 * * * *", "Europe/Berlin", "2026-03-29T00:30:00", "2026-03-29T01:00:00"),
    ("0 * * * *", "Europe/Berlin", "2026-03-29T01:00:00", "2026-03-29T02:00:00"),
    ("0 * * * *", "Europe/Berlin", "2026-10-25T00:30:00", "2026-10-25T01:00:00"),
    ("0 * * * *", "Europe/Berlin", "2026-10-25T01:00:00", "2026-10-25T02:00:00"),
    # every 15 minutes across New York's jump: 01:45 EST, then 03:00 EDT (15 real minutes)
    ("*/15 * * * *", "America/New_York", "2026-03-08T06:45:00", "2026-03-08T07:00:00"),
    # a fixed time in the hour New York skips: 03:00 EDT
    ("30 2 * * *", "America/New_York", "2026-03-07T12:00:00", "2026-03-08T07:00:00"),
    # a fixed time in the hour New York repeats: first 01:30 (EDT) ...
    ("30 1 * * *", "America/New_York", "2026-10-31T12:00:00", "2026-11-01T05:30:00"),
    # ... not the second (01:30 EST, 06:30 UTC): the 2nd, 01:30 EST
    ("30 1 * * *", "America/New_York", "2026-11-01T05:30:00", "2026-11-02T06:30:00"),
    # weekdays at 9:00 New York: Friday 6 March (EST) -> Monday 9 March, now EDT
    ("0 9 * * 1-5", "America/New_York", "2026-03-06T15:00:00", "2026-03-09T13:00:00"),
    # UTC, across a year
    ("0 0 * * *", "UTC", "2026-12-31T23:59:59", "2027-01-01T00:00:00"),
    # strictly after: a tick exactly at `after` is not the next one
    ("*/5 * * * *", "UTC", "2026-05-01T10:05:00", "2026-05-01T10:10:00"),
]


@pytest.mark.parametrize(("expression", "zone", "after", "expected"), CRON_TABLE)
def test_the_next_cron_tick(expression: str, zone: str, after: str, expected: str) -> None:
    c = cadence(expression, None, zone)
    assert next_tick(c, utc(after), ANCHOR) == utc(expected)


@pytest.mark.parametrize(
    ("every", "after", "expected_offset"),
    [
        (1.0, 0.0, 1.0),  # strictly after the anchor itself
        (1.0, 9.4, 10.0),
        (1.5, 10.0, 10.5),  # fractional: the grid 0, 1.5, 3 ... from the anchor
        (1.5, 10.5, 12.0),
        (3600.0, 0.5, 3600.0),
    ],
)
def test_interval_ticks_are_a_grid_from_the_anchor(
    every: float, after: float, expected_offset: float
) -> None:
    c = cadence(None, every, "Europe/Berlin")  # the zone does not move an interval
    tick = next_tick(c, ANCHOR + timedelta(seconds=after), ANCHOR)
    assert tick == ANCHOR + timedelta(seconds=expected_offset)


def test_an_interval_keeps_real_time_across_a_dst_change() -> None:
    anchor = utc("2026-03-29T00:30:00")  # 01:30 CET, 30 minutes before Berlin's jump
    c = cadence(None, 3600, "Europe/Berlin")
    assert next_tick(c, anchor, anchor) == utc("2026-03-29T01:30:00")  # 03:30 CEST


def test_ticks_between_keeps_the_latest_ones() -> None:
    c = cadence(None, 1, "UTC")
    ticks = ticks_between(c, ANCHOR, ANCHOR + timedelta(seconds=10), ANCHOR, 3)
    assert ticks == [ANCHOR + timedelta(seconds=s) for s in (8, 9, 10)]
    # after < t <= until
    assert ticks_between(c, ANCHOR, ANCHOR + timedelta(seconds=2.5), ANCHOR, 10) == [
        ANCHOR + timedelta(seconds=1),
        ANCHOR + timedelta(seconds=2),
    ]
    assert ticks_between(c, ANCHOR, ANCHOR, ANCHOR, 10) == []


def test_cron_ticks_between_across_the_fall_back() -> None:
    c = cadence("0 * * * *", None, "Europe/Berlin")
    ticks = ticks_between(c, utc("2026-10-24T23:30:00"), utc("2026-10-25T03:00:00"), ANCHOR, 10)
    # hourly in real time: 02:00 CEST, 02:00 CET, 03:00, 04:00 local
    assert ticks == [utc(f"2026-10-25T0{h}:00:00") for h in (0, 1, 2, 3)]
    latest = ticks_between(c, utc("2026-10-24T23:30:00"), utc("2026-10-25T03:00:00"), ANCHOR, 2)
    assert latest == [utc("2026-10-25T02:00:00"), utc("2026-10-25T03:00:00")]


def test_a_valid_cadence_is_kept_as_given() -> None:
    assert cadence("*/5  *  * * *", None, None) == Cadence("*/5 * * * *", None, "UTC")
    assert cadence(None, 2, "America/New_York") == Cadence(None, 2.0, "America/New_York")


@pytest.mark.parametrize(
    ("cron", "every", "zone", "field", "hint"),
    [
        ("* * * * *", 5.0, "UTC", "schedule.cron", "exactly one"),
        (None, None, "UTC", "schedule.cron", "exactly one"),
        (None, 0.5, "UTC", "schedule.everySeconds", "1 or more"),
        (None, float("nan"), "UTC", "schedule.everySeconds", "1 or more"),
        (None, float("inf"), "UTC", "schedule.everySeconds", "1 or more"),
        ("61 * * * *", None, "UTC", "schedule.cron", "*/5 * * * *"),
        ("* * *", None, "UTC", "schedule.cron", "5-field"),
        ("0 0 * * * *", None, "UTC", "schedule.cron", "5-field"),  # seconds: not cron's
        ("@reboot", None, "UTC", "schedule.cron", "5-field"),
        ("not a cron at all", None, "UTC", "schedule.cron", "e.g."),
        ("0 0 31 2 *", None, "UTC", "schedule.cron", "e.g."),  # 31 February never comes
        ("* * * * *", None, "Mars/Olympus", "schedule.timezone", "Europe/Berlin"),
        ("* * * * *", None, "", "schedule.timezone", "Europe/Berlin"),
    ],
)
def test_a_bad_cadence_is_bad_input_naming_its_field(
    cron: str | None, every: float | None, zone: str, field: str, hint: str
) -> None:
    with pytest.raises(BadInput) as caught:
        cadence(cron, every, zone)
    assert caught.value.field == field
    assert hint in caught.value.message


def test_the_field_prefix_is_the_callers() -> None:
    with pytest.raises(BadInput) as caught:
        cadence(None, 0, "UTC", prefix="")
    assert caught.value.field == "everySeconds"
