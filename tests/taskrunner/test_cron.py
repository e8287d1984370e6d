"""`taskrunner.cron`: validating a cadence, and its ticks, across DST changes. Pure: no
servers.

Every expected instant below was worked out by hand from the tz rules, not copied from
the library:
- Europe/Berlin is CET (UTC+1) in winter and CEST (UTC+2) in summer; clocks change at
  01:00 UTC on the last Sunday of March and of October: 2026-03-29 (02:00 CET -> 03:00
  CEST, so 02:00-02:59 does not exist) and 2026-10-25 (03:00 CEST -> 02:00 CET, so
  02:00-02:59 happens twice, first at 00:xx UTC, then at 01:xx UTC).
- America/New_York is EST (UTC-5) / EDT (UTC-4); clocks change at 02:00 local on the second
  Sunday of March, 2026-03-08 at 07:00 UTC (02:00 EST -> 03:00 EDT), and on the first
  Sunday of November, 2026-11-01 at 06:00 UTC (02:00 EDT -> 01:00 EST, so 01:00-01:59
  happens twice, first at 05:xx UTC, then at 06:xx UTC).
- 2026-01-01 is a Thursday, so 2026-01-02, 2026-03-06 and 2026-03-27 are Fridays.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from taskrunner.cron import MAX_EVERY_SECONDS, Cadence, cadence, next_tick, ticks_between
from taskrunner.errors import BadInput

BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"
ANCHOR = datetime(2026, 3, 29, 0, 59, 30, tzinfo=UTC)  # everySeconds grids start here


def z(text: str) -> datetime:
    """An instant in UTC: "2026-03-29T01:00Z"."""
    return datetime.fromisoformat(text).astimezone(UTC)


def s(n: float) -> datetime:
    """ANCHOR + n seconds."""
    return ANCHOR + timedelta(seconds=n)


# (cron, everySeconds, timezone, after, the next tick)
NEXT = [
    # --- Berlin, clocks forward 2026-03-29: 02:00 CET -> 03:00 CEST at 01:00Z
    pytest.param("30 2 * * *", None, BERLIN, z("2026-03-27T12:00Z"), z("2026-03-28T01:30Z"),
                 id="berlin-02:30-the-day-before-is-CET"),
    pytest.param("30 2 * * *", None, BERLIN, z("2026-03-28T12:00Z"), z("2026-03-29T01:00Z"),
                 id="berlin-skipped-02:30-fires-at-03:00-CEST"),
    pytest.param("30 2 * * *", None, BERLIN, z("2026-03-29T01:00Z"), z("2026-03-30T00:30Z"),
                 id="berlin-skipped-02:30-fired-once-next-is-tomorrow-CEST"),
    pytest.param("0 3 * * *", None, BERLIN, z("2026-03-28T12:00Z"), z("2026-03-29T01:00Z"),
                 id="berlin-03:00-on-the-short-day"),
    pytest.param("0 * * * *", None, BERLIN, z("2026-03-29T00:00Z"), z("2026-03-29T01:00Z"),
                 id="berlin-hourly-01:00-CET-then-03:00-CEST-one-real-hour-later"),
    pytest.param("*/15 * * * *", None, BERLIN, z("2026-03-29T00:50Z"), z("2026-03-29T01:00Z"),
                 id="berlin-quarterly-01:45-CET-then-03:00-CEST"),
    # hour field starts with * -> real-time rule: the skipped 02:00 simply does not fire
    pytest.param("0 */2 * * *", None, BERLIN, z("2026-03-29T00:30Z"), z("2026-03-29T02:00Z"),
                 id="berlin-two-hourly-skips-the-missing-02:00-to-04:00-CEST"),
    pytest.param("0 9 * * 1-5", None, BERLIN, z("2026-03-27T08:00Z"), z("2026-03-30T07:00Z"),
                 id="berlin-weekdays-09:00-friday-CET-to-monday-CEST"),
    # --- Berlin, clocks back 2026-10-25: 03:00 CEST -> 02:00 CET at 01:00Z
    pytest.param("30 2 * * *", None, BERLIN, z("2026-10-24T12:00Z"), z("2026-10-25T00:30Z"),
                 id="berlin-repeated-02:30-fires-at-its-first-pass-CEST"),
    pytest.param("30 2 * * *", None, BERLIN, z("2026-10-25T00:30Z"), z("2026-10-26T01:30Z"),
                 id="berlin-repeated-02:30-not-again-at-its-second-pass"),
    pytest.param("30 2 * * *", None, BERLIN, z("2026-10-25T01:10Z"), z("2026-10-26T01:30Z"),
                 id="berlin-from-inside-the-second-pass-next-is-tomorrow-CET"),
    pytest.param("0 3 * * *", None, BERLIN, z("2026-10-24T12:00Z"), z("2026-10-25T02:00Z"),
                 id="berlin-03:00-on-the-long-day-is-CET"),
    pytest.param("0 * * * *", None, BERLIN, z("2026-10-25T00:00Z"), z("2026-10-25T01:00Z"),
                 id="berlin-hourly-02:00-CEST-then-02:00-CET"),
    pytest.param("0 * * * *", None, BERLIN, z("2026-10-25T01:00Z"), z("2026-10-25T02:00Z"),
                 id="berlin-hourly-02:00-CET-then-03:00-CET"),
    pytest.param("*/15 * * * *", None, BERLIN, z("2026-10-25T00:50Z"), z("2026-10-25T01:00Z"),
                 id="berlin-quarterly-02:45-CEST-then-02:00-CET"),
    # --- New York, clocks forward 2026-03-08: 02:00 EST -> 03:00 EDT at 07:00Z
    pytest.param("30 2 * * *", None, NEW_YORK, z("2026-03-08T05:00Z"), z("2026-03-08T07:00Z"),
                 id="ny-skipped-02:30-fires-at-03:00-EDT"),
    pytest.param("30 2 * * *", None, NEW_YORK, z("2026-03-08T07:00Z"), z("2026-03-09T06:30Z"),
                 id="ny-skipped-02:30-fired-once-next-is-tomorrow-EDT"),
    pytest.param("0 * * * *", None, NEW_YORK, z("2026-03-08T06:00Z"), z("2026-03-08T07:00Z"),
                 id="ny-hourly-01:00-EST-then-03:00-EDT"),
    pytest.param("0 9 * * 1-5", None, NEW_YORK, z("2026-03-06T14:00Z"), z("2026-03-09T13:00Z"),
                 id="ny-weekdays-09:00-friday-EST-to-monday-EDT"),
    pytest.param("*/15 * * * *", None, NEW_YORK, z("2026-03-08T06:45Z"), z("2026-03-08T07:00Z"),
                 id="ny-quarterly-01:45-EST-then-03:00-EDT"),
    # --- New York, clocks back 2026-11-01: 02:00 EDT -> 01:00 EST at 06:00Z
    pytest.param("30 1 * * *", None, NEW_YORK, z("2026-10-31T12:00Z"), z("2026-11-01T05:30Z"),
                 id="ny-repeated-01:30-fires-at-its-first-pass-EDT"),
    pytest.param("30 1 * * *", None, NEW_YORK, z("2026-11-01T05:30Z"), z("2026-11-02T06:30Z"),
                 id="ny-repeated-01:30-not-again-at-its-second-pass"),
    pytest.param("30 2 * * *", None, NEW_YORK, z("2026-10-31T12:00Z"), z("2026-11-01T07:30Z"),
                 id="ny-02:30-on-the-long-day-happens-once-in-EST"),
    pytest.param("0 * * * *", None, NEW_YORK, z("2026-11-01T05:00Z"), z("2026-11-01T06:00Z"),
                 id="ny-hourly-01:00-EDT-then-01:00-EST"),
    pytest.param("*/15 * * * *", None, NEW_YORK, z("2026-11-01T05:50Z"), z("2026-11-01T06:00Z"),
                 id="ny-quarterly-01:45-EDT-then-01:00-EST"),
    # --- UTC (the default zone) and strictness
    pytest.param("*/5 * * * *", None, None, z("2026-01-01T00:02:30Z"), z("2026-01-01T00:05Z"),
                 id="utc-every-5-minutes"),
    pytest.param("*/5 * * * *", None, None, z("2026-01-01T00:05Z"), z("2026-01-01T00:10Z"),
                 id="utc-a-tick-at-after-is-not-after-it"),
    pytest.param("*/5 * * * *", None, None, z("2026-01-01T00:04:59.999999Z"),
                 z("2026-01-01T00:05Z"), id="utc-a-microsecond-before-a-tick"),
    pytest.param("0 9 * * 1-5", None, "UTC", z("2026-01-02T10:00Z"), z("2026-01-05T09:00Z"),
                 id="utc-weekdays-09:00-friday-to-monday"),
    pytest.param("0 0 * * *", None, "UTC", z("2026-12-31T23:59:59Z"), z("2027-01-01T00:00Z"),
                 id="utc-midnight-into-the-new-year"),
    pytest.param("0 0 29 2 *", None, "UTC", z("2026-01-01T00:00Z"), z("2028-02-29T00:00Z"),
                 id="utc-29-february-waits-for-a-leap-year"),
    # --- everySeconds: anchor + k * every (ANCHOR is 2026-03-29T00:59:30Z), zone ignored
    pytest.param(None, 60, BERLIN, s(15), s(60), id="every-60s-across-berlin-jump-real-time"),
    pytest.param(None, 1.5, None, ANCHOR, s(1.5), id="every-1.5s-first-tick"),
    pytest.param(None, 1.5, None, s(3), s(4.5), id="every-1.5s-a-tick-at-after-is-not-after"),
    pytest.param(None, 1.5, None, s(4), s(4.5), id="every-1.5s-between-ticks"),
    pytest.param(None, 1, None, s(9.4), s(10), id="every-1s-between-ticks"),
    pytest.param(None, 3600, None, s(0.5), s(3600), id="every-hour-just-after-the-anchor"),
    pytest.param(None, 3600, None, s(-86_400), s(3600),
                 id="every-before-the-anchor-first-tick-is-one-interval-after-it"),
    pytest.param(None, 86_400, NEW_YORK, z("2026-11-01T00:59:30Z"), z("2026-11-02T00:59:30Z"),
                 id="every-day-is-24-real-hours-across-ny-fall-back"),
]  # fmt: skip


@pytest.mark.parametrize(("cron", "every", "timezone", "after", "expected"), NEXT)
def test_next_tick(
    cron: str | None,
    every: float | None,
    timezone: str | None,
    after: datetime,
    expected: datetime,
) -> None:
    tick = next_tick(cadence(cron, every, timezone), after, ANCHOR)
    assert tick == expected
    assert tick.tzinfo is UTC
    # the same instant given in another zone changes nothing
    elsewhere = after.astimezone(ZoneInfo("Asia/Tokyo"))
    assert next_tick(cadence(cron, every, timezone), elsewhere, ANCHOR) == expected


def test_next_tick_reads_after_as_an_instant_whatever_its_zone() -> None:
    c = cadence("30 2 * * *", None, BERLIN)
    local = datetime(2026, 3, 28, 13, 0, tzinfo=ZoneInfo(BERLIN))  # 12:00Z
    assert next_tick(c, local, ANCHOR) == z("2026-03-29T01:00Z")
    tokyo = datetime(2026, 3, 29, 9, 59, tzinfo=ZoneInfo("Asia/Tokyo"))  # 00:59Z
    assert next_tick(c, tokyo, ANCHOR) == z("2026-03-29T01:00Z")


@pytest.mark.parametrize(
    ("timezone", "after", "until", "expected", "local_hours"),
    [
        # Berlin forward: 00:00 CET, 01:00 CET, 03:00 CEST, 04:00, 05:00 - every real hour
        (BERLIN, "2026-03-28T22:30Z", "2026-03-29T03:00Z",
         ["2026-03-28T23:00Z", "2026-03-29T00:00Z", "2026-03-29T01:00Z", "2026-03-29T02:00Z",
          "2026-03-29T03:00Z"], [0, 1, 3, 4, 5]),
        # Berlin back: 01:00 CEST, 02:00 CEST, 02:00 CET, 03:00 CET, 04:00 CET
        (BERLIN, "2026-10-24T22:30Z", "2026-10-25T03:00Z",
         ["2026-10-24T23:00Z", "2026-10-25T00:00Z", "2026-10-25T01:00Z", "2026-10-25T02:00Z",
          "2026-10-25T03:00Z"], [1, 2, 2, 3, 4]),
        # New York forward: 00:00 EST, 01:00 EST, 03:00 EDT
        (NEW_YORK, "2026-03-08T04:30Z", "2026-03-08T07:00Z",
         ["2026-03-08T05:00Z", "2026-03-08T06:00Z", "2026-03-08T07:00Z"], [0, 1, 3]),
        # New York back: 00:00 EDT, 01:00 EDT, 01:00 EST, 02:00 EST
        (NEW_YORK, "2026-11-01T03:30Z", "2026-11-01T07:00Z",
         ["2026-11-01T04:00Z", "2026-11-01T05:00Z", "2026-11-01T06:00Z", "2026-11-01T07:00Z"],
         [0, 1, 1, 2]),
    ],
)  # fmt: skip
def test_hourly_cron_fires_every_real_hour_across_both_changes(
    timezone: str, after: str, until: str, expected: list[str], local_hours: list[int]
) -> None:
    ticks = ticks_between(cadence("0 * * * *", None, timezone), z(after), z(until), ANCHOR, 10)
    assert ticks == [z(t) for t in expected]
    assert [t.astimezone(ZoneInfo(timezone)).hour for t in ticks] == local_hours


@pytest.mark.parametrize(
    ("after", "until", "expected"),
    [
        # forward: 01:45 CET, 03:00 CEST, 03:15 CEST
        ("2026-03-29T00:40Z", "2026-03-29T01:20Z",
         ["2026-03-29T00:45Z", "2026-03-29T01:00Z", "2026-03-29T01:15Z"]),
        # back: 02:45 CEST, 02:00 CET, 02:15 CET
        ("2026-10-25T00:40Z", "2026-10-25T01:20Z",
         ["2026-10-25T00:45Z", "2026-10-25T01:00Z", "2026-10-25T01:15Z"]),
    ],
)  # fmt: skip
def test_quarterly_cron_keeps_15_real_minutes_across_both_changes(
    after: str, until: str, expected: list[str]
) -> None:
    c = cadence("*/15 * * * *", None, BERLIN)
    assert ticks_between(c, z(after), z(until), ANCHOR, 10) == [z(t) for t in expected]


@pytest.mark.parametrize(
    ("after", "until", "expected"),
    [
        # 02:30 CET, then the skipped one at 03:00 CEST, then 02:30 CEST
        ("2026-03-27T12:00Z", "2026-03-31T12:00Z",
         ["2026-03-28T01:30Z", "2026-03-29T01:00Z", "2026-03-30T00:30Z", "2026-03-31T00:30Z"]),
        # 02:30 CEST twice, the repeated day once (first pass), then 02:30 CET
        ("2026-10-23T12:00Z", "2026-10-27T12:00Z",
         ["2026-10-24T00:30Z", "2026-10-25T00:30Z", "2026-10-26T01:30Z", "2026-10-27T01:30Z"]),
    ],
)  # fmt: skip
def test_a_fixed_time_in_a_changing_hour_fires_once_a_day(
    after: str, until: str, expected: list[str]
) -> None:
    c = cadence("30 2 * * *", None, BERLIN)
    assert ticks_between(c, z(after), z(until), ANCHOR, 10) == [z(t) for t in expected]


def test_ticks_between_keeps_the_latest_most() -> None:
    every = cadence(None, 10, None)
    assert ticks_between(every, ANCHOR, s(100), ANCHOR, 3) == [s(80), s(90), s(100)]
    assert ticks_between(every, ANCHOR, s(100), ANCHOR, 100) == [s(10 * k) for k in range(1, 11)]
    assert ticks_between(every, ANCHOR, s(100), ANCHOR, 1) == [s(100)]
    five = cadence("*/5 * * * *", None, None)
    start, end = z("2026-01-01T00:00Z"), z("2026-01-01T01:00Z")
    assert ticks_between(five, start, end, ANCHOR, 3) == [
        z("2026-01-01T00:50Z"),
        z("2026-01-01T00:55Z"),
        z("2026-01-01T01:00Z"),
    ]
    assert len(ticks_between(five, start, end, ANCHOR, 100)) == 12


def test_ticks_between_excludes_after_and_includes_until() -> None:
    c = cadence(None, 1.5, None)
    assert ticks_between(c, s(1.5), s(6), ANCHOR, 10) == [s(3), s(4.5), s(6)]
    assert ticks_between(c, s(1.4), s(5.9), ANCHOR, 10) == [s(1.5), s(3), s(4.5)]
    daily = cadence("0 0 * * *", None, None)
    assert ticks_between(daily, z("2026-01-01T00:00Z"), z("2026-01-03T00:00Z"), ANCHOR, 9) == [
        z("2026-01-02T00:00Z"),
        z("2026-01-03T00:00Z"),
    ]


def test_ticks_between_of_nothing_is_empty() -> None:
    c = cadence(None, 1, None)
    assert ticks_between(c, s(0), s(10), ANCHOR, 0) == []
    assert ticks_between(c, s(10), s(10), ANCHOR, 5) == []
    assert ticks_between(c, s(10), s(5), ANCHOR, 5) == []
    assert ticks_between(c, s(0.2), s(0.8), ANCHOR, 5) == []  # no tick in between
    assert ticks_between(cadence("0 0 1 1 *", None, None), s(0), s(3600), ANCHOR, 5) == []


def test_a_long_gap_gives_its_latest_ticks_without_walking_it() -> None:
    # a year of `* * * * *` is 525,600 ticks; the catch-up wants the last 3
    minutely = cadence("* * * * *", None, BERLIN)
    assert ticks_between(
        minutely, z("2025-01-01T00:00Z"), z("2026-01-01T00:00:30Z"), ANCHOR, 3
    ) == [z("2025-12-31T23:58Z"), z("2025-12-31T23:59Z"), z("2026-01-01T00:00Z")]
    # ten years of every second: computed, not iterated
    every = cadence(None, 1, None)
    ten_years = s(10 * 365 * 86_400)
    assert ticks_between(every, ANCHOR, ten_years, ANCHOR, 2) == [
        ten_years - timedelta(seconds=1),
        ten_years,
    ]
    # a sparse expression and a large `most` look back as far as `after`, no further
    yearly = cadence("0 0 1 1 *", None, None)
    ticks = ticks_between(yearly, z("2000-01-01T00:00Z"), z("2026-06-01T00:00Z"), ANCHOR, 100)
    assert ticks == [datetime(year, 1, 1, tzinfo=UTC) for year in range(2001, 2027)]


@pytest.mark.parametrize(
    ("cron", "timezone", "after", "until"),
    [
        ("30 2 * * *", BERLIN, "2026-03-20T00:00Z", "2026-04-05T00:00Z"),
        ("15,45 2 * * *", BERLIN, "2026-03-28T00:00Z", "2026-03-31T00:00Z"),
        ("0 1-3 * * *", BERLIN, "2026-10-20T00:00Z", "2026-10-30T00:00Z"),
        ("*/20 * * * *", NEW_YORK, "2026-10-31T20:00Z", "2026-11-01T12:00Z"),
        ("*/30 1 * * *", NEW_YORK, "2026-10-30T00:00Z", "2026-11-03T00:00Z"),
        ("0 */2 * * *", NEW_YORK, "2026-03-06T00:00Z", "2026-03-10T00:00Z"),
        ("0 0 * * *", "Australia/Lord_Howe", "2026-01-01T00:00Z", "2027-01-01T00:00Z"),
    ],
)
def test_ticks_between_agrees_with_stepping_next_tick(
    cron: str, timezone: str, after: str, until: str
) -> None:
    """Catch-ups and the next run must name the same instants, or a tick fires twice."""
    c = cadence(cron, None, timezone)
    stepped = []
    at = z(after)
    while (at := next_tick(c, at, ANCHOR)) <= z(until):
        stepped.append(at)
    assert stepped == sorted(set(stepped))
    assert ticks_between(c, z(after), z(until), ANCHOR, 10_000) == stepped
    assert ticks_between(c, z(after), z(until), ANCHOR, 4) == stepped[-4:]


def test_a_fixed_time_skipped_twice_in_one_jump_fires_once() -> None:
    # 02:15 and 02:45 both fall in Berlin's missing hour: one tick at 03:00 CEST
    c = cadence("15,45 2 * * *", None, BERLIN)
    ticks = ticks_between(c, z("2026-03-28T12:00Z"), z("2026-03-30T12:00Z"), ANCHOR, 10)
    assert ticks == [z("2026-03-29T01:00Z"), z("2026-03-30T00:15Z"), z("2026-03-30T00:45Z")]


def test_interval_ticks_are_the_same_instants_whichever_function_finds_them() -> None:
    c = cadence(None, 1.1, None)  # not a binary fraction: k * 1.1 rounds
    stepped = []
    at = ANCHOR
    for _ in range(2000):
        at = next_tick(c, at, ANCHOR)
        stepped.append(at)
    assert stepped == ticks_between(c, ANCHOR, stepped[-1], ANCHOR, 5000)
    assert ticks_between(c, stepped[10], stepped[20], ANCHOR, 5) == stepped[16:21]


def test_a_naive_datetime_is_a_programming_error() -> None:
    c = cadence("* * * * *", None, None)
    with pytest.raises(ValueError, match="aware"):
        next_tick(c, datetime(2026, 1, 1), ANCHOR)
    with pytest.raises(ValueError, match="aware"):
        ticks_between(c, ANCHOR, datetime(2027, 1, 1), ANCHOR, 1)


# --- validation ---------------------------------------------------------------------


def test_a_valid_cadence_is_normalised() -> None:
    assert cadence("  */5   *\t* * *  ", None, None) == Cadence("*/5 * * * *", None, "UTC")
    assert cadence(None, 60, None) == Cadence(None, 60.0, "UTC")
    assert isinstance(cadence(None, 60, None).every_seconds, float)
    assert cadence("0 9 * * mon-fri", None, BERLIN) == Cadence("0 9 * * mon-fri", None, BERLIN)
    assert cadence(None, 1, NEW_YORK).timezone == NEW_YORK
    assert cadence("0 0 L * *", None, "US/Eastern").cron == "0 0 L * *"  # cronsim's L
    assert cadence(None, MAX_EVERY_SECONDS, None).every_seconds == MAX_EVERY_SECONDS


NEVER = "0 0 */20 * 1L"  # the 1st or 21st that is the last Monday of its month: none


@pytest.mark.parametrize(
    ("cron", "every", "timezone", "field", "hints"),
    [
        ("* * * * *", 60, None, "cron", ["exactly one", "*/5 * * * *"]),
        (None, None, None, "cron", ["exactly one", "everySeconds"]),
        (None, 0.5, None, "everySeconds", ["1 or more", "0.5"]),
        (None, 0, None, "everySeconds", ["1 or more"]),
        (None, -5, None, "everySeconds", ["1 or more"]),
        (None, math.nan, None, "everySeconds", ["1 or more"]),
        (None, math.inf, None, "everySeconds", ["1 or more"]),
        (None, MAX_EVERY_SECONDS + 1, None, "everySeconds", ["10 years", "use cron"]),
        ("61 * * * *", None, None, "cron", ["'61 * * * *'", "bad minute", "minute 0-59",
                                           "*/5 * * * *"]),
        ("0 24 * * *", None, None, "cron", ["bad hour", "hour 0-23"]),
        ("0 0 0 * *", None, None, "cron", ["bad day-of-month"]),
        ("0 0 * 13 *", None, None, "cron", ["bad month"]),
        ("0 0 * * 8", None, None, "cron", ["bad day-of-week"]),
        ("0 0 30 2 *", None, None, "cron", ["bad day-of-month"]),
        ("0 0 31 2,4 *", None, None, "cron", ["bad day-of-month"]),  # no such date
        ("a b c d e", None, None, "cron", ["'a b c d e'", "*/5 * * * *"]),
        ("* * *", None, None, "cron", ["'* * *'", "has 3 fields", "cron takes 5",
                                       "*/5 * * * *"]),
        ("not a cron", None, None, "cron", ["has 3 fields", "*/5 * * * *"]),
        ("", None, None, "cron", ["has 0 fields", "*/5 * * * *"]),
        ("*/10 * * * * *", None, None, "cron", ["has 6 fields", "everySeconds"]),
        ("@reboot", None, None, "cron", ["nicknames", "*/5 * * * *"]),
        ("@daily", None, None, "cron", ['"0 0 * * *"']),
        ("@hourly", None, None, "cron", ['"0 * * * *"']),
        (NEVER, None, None, "cron", ["never fires", "*/5 * * * *"]),
        ("0 9 * * *", None, "Mars/Olympus", "timezone", ["'Mars/Olympus'", "Europe/Berlin"]),
        ("0 9 * * *", None, "", "timezone", ["''", "Europe/Berlin", "leave it out"]),
        (None, 60, "Nowhere", "timezone", ["Europe/Berlin"]),
        (None, 60, "europe/berlin", "timezone", ["case matters"]),
        (None, 60, " UTC", "timezone", ["Europe/Berlin"]),
        (None, 60, "Europe", "timezone", ["Europe/Berlin"]),  # a directory of the database
        (None, 60, "localtime", "timezone", ["Europe/Berlin"]),  # the machine's, not IANA's
        (None, 60, "../../etc/passwd", "timezone", ["Europe/Berlin"]),
        (None, 60, "/etc/localtime", "timezone", ["Europe/Berlin"]),
        (None, 60, "zone.tab", "timezone", ["Europe/Berlin"]),  # a file that is no zone
    ],
)  # fmt: skip
def test_a_bad_cadence_is_bad_input_naming_the_field_and_the_fix(
    cron: str | None,
    every: float | None,
    timezone: str | None,
    field: str,
    hints: list[str],
) -> None:
    with pytest.raises(BadInput) as raised:
        cadence(cron, every, timezone)
    assert raised.value.field == f"schedule.{field}"
    assert raised.value.code == "BAD_INPUT"
    assert raised.value.message.startswith(f"schedule.{field}: ")
    for hint in hints:
        assert hint in raised.value.message


def test_the_prefix_names_the_field() -> None:
    with pytest.raises(BadInput) as raised:
        cadence(None, 0.5, None, prefix="input.")
    assert raised.value.field == "input.everySeconds"
    with pytest.raises(BadInput) as raised:
        cadence("* *", None, None, prefix="")
    assert raised.value.field == "cron"
