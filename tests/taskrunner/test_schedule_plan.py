"""`schedules.plan`: which ticks a due schedule fires in one round, by its catchup and
overlap policies, and where its next run goes. Pure: rows built by hand, no servers.

The grid is T0 + k seconds (everySeconds 1 from a creation at T0) unless a test says
otherwise; `seconds(n)` is T0 + n s."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from taskrunner.schedules import ON_TIME_SECONDS, plan
from tests.support.schedules import T0, record, seconds

MOST = 100  # SCHEDULE_MAX_CATCHUP unless a test bounds it


def ticks(*numbers: float) -> list[datetime]:
    return [seconds(n) for n in numbers]


def test_a_tick_found_on_time_fires_once_and_the_next_run_is_the_next_tick() -> None:
    for catchup in ("NONE", "ONE", "ALL"):
        p = plan(record(next_run_at=seconds(5), catchup=catchup), seconds(5.2), False, MOST)
        assert p.fire == ticks(5), catchup
        assert p.skipped == 0 and p.skip_note is None
        assert p.next_run_at == seconds(6)


def test_a_tick_exactly_at_now_fires_and_the_next_run_is_strictly_after_now() -> None:
    p = plan(record(next_run_at=seconds(5)), seconds(5), False, MOST)
    assert p.fire == ticks(5)
    assert p.next_run_at == seconds(6)


@pytest.mark.parametrize(
    ("catchup", "fired"),
    [
        ("NONE", [20]),  # only the current tick
        ("ONE", [19, 20]),  # + the latest missed one
        ("ALL", list(range(1, 21))),  # + each missed one
    ],
)
def test_after_a_gap_catchup_decides_which_missed_ticks_fire(
    catchup: str, fired: list[int]
) -> None:
    # every worker was down from tick 1 to now (20.5 s): ticks 1..20 are due, 20 is current
    p = plan(record(next_run_at=seconds(1), catchup=catchup), seconds(20.5), False, MOST)
    assert p.fire == ticks(*fired)
    assert p.skipped == 0
    assert p.next_run_at == seconds(21)


def test_the_current_tick_counts_up_to_on_time_seconds_late_then_it_is_missed() -> None:
    every = 10.0
    on_time = record(every=every, next_run_at=seconds(10), catchup="NONE")
    just_in = seconds(10 + ON_TIME_SECONDS - 0.1)
    assert plan(on_time, just_in, False, MOST).fire == ticks(10)
    too_late = seconds(10 + ON_TIME_SECONDS + 0.1)
    # past the window the tick is a missed one: NONE fires nothing, ONE and ALL fire it
    assert plan(on_time, too_late, False, MOST).fire == []
    for catchup in ("ONE", "ALL"):
        late = record(every=every, next_run_at=seconds(10), catchup=catchup)
        assert plan(late, too_late, False, MOST).fire == ticks(10), catchup
    # either way the next run is the next tick, after now
    assert plan(on_time, too_late, False, MOST).next_run_at == seconds(20)


def test_all_fires_at_most_the_latest_most_missed_ticks_plus_the_current_one() -> None:
    # 50 ticks due (1..50), SCHEDULE_MAX_CATCHUP 5: the 5 latest missed and the current
    p = plan(record(next_run_at=seconds(1), catchup="ALL"), seconds(50.3), False, 5)
    assert p.fire == ticks(45, 46, 47, 48, 49, 50)
    assert p.next_run_at == seconds(51)


def test_one_after_a_gap_longer_than_most_still_fires_the_latest_missed_tick() -> None:
    p = plan(record(next_run_at=seconds(1), catchup="ONE"), seconds(500.3), False, 5)
    assert p.fire == ticks(499, 500)
    assert p.next_run_at == seconds(501)


def test_none_after_a_gap_longer_than_most_fires_the_current_tick() -> None:
    p = plan(record(next_run_at=seconds(1), catchup="NONE"), seconds(500.3), False, 5)
    assert p.fire == ticks(500)


def test_a_gap_with_no_current_tick_fires_by_catchup_only() -> None:
    # hourly from T0: ticks at 1 h and 2 h were missed, now is 2 h 30 min (no current tick)
    hourly = 3600.0
    now = seconds(2 * hourly + 1800)
    for catchup, fired in (("NONE", []), ("ONE", [2]), ("ALL", [1, 2])):
        s = record(every=hourly, next_run_at=seconds(hourly), catchup=catchup)
        p = plan(s, now, False, MOST)
        assert p.fire == [seconds(n * hourly) for n in fired], catchup
        assert p.next_run_at == seconds(3 * hourly)


def test_overlap_skip_fires_nothing_while_the_last_run_is_unfinished() -> None:
    s = record(next_run_at=seconds(5), overlap="SKIP", last_task=True)
    p = plan(s, seconds(5.1), True, MOST)
    assert p.fire == []
    assert p.skipped == 1
    assert p.skip_note == seconds(5)  # noted on the unfinished task (TickSkipped)
    assert p.reason
    assert p.next_run_at == seconds(6)  # skipped, not retried: the schedule moves on


def test_overlap_skip_after_a_gap_skips_every_chosen_tick_noting_the_latest() -> None:
    s = record(next_run_at=seconds(1), overlap="SKIP", catchup="ALL", last_task=True)
    p = plan(s, seconds(10.5), True, MOST)
    assert p.fire == []
    assert p.skipped == 10
    assert p.skip_note == seconds(10)
    assert p.next_run_at == seconds(11)


def test_overlap_skip_collapses_several_due_ticks_to_the_latest() -> None:
    # the last run has finished, but runs of one round would overlap each other
    s = record(next_run_at=seconds(1), overlap="SKIP", catchup="ALL", last_task=True)
    p = plan(s, seconds(6.5), False, MOST)
    assert p.fire == ticks(6)
    assert p.skipped == 5
    assert p.skip_note is None  # nothing unfinished to note it on
    assert p.next_run_at == seconds(7)


def test_overlap_skip_with_a_finished_last_run_fires_like_allow() -> None:
    s = record(next_run_at=seconds(3), overlap="SKIP", last_task=True)
    p = plan(s, seconds(3.1), False, MOST)
    assert p.fire == ticks(3) and p.skipped == 0 and p.skip_note is None


def test_overlap_allow_fires_even_while_the_last_run_is_unfinished() -> None:
    s = record(next_run_at=seconds(3), overlap="ALLOW", last_task=True)
    p = plan(s, seconds(3.1), True, MOST)
    assert p.fire == ticks(3) and p.skipped == 0 and p.skip_note is None


def test_fired_ticks_are_distinct_on_the_grid_and_oldest_first() -> None:
    every = 2.5
    s = record(every=every, next_run_at=seconds(2.5), catchup="ALL")
    p = plan(s, seconds(31), False, MOST)
    assert p.fire == [seconds(every * k) for k in range(1, 13)]  # 2.5 .. 30
    assert len(set(p.fire)) == len(p.fire)
    assert p.next_run_at == seconds(32.5)


@pytest.mark.parametrize("offset", [0.0, 0.001, 0.5, 0.999, 1.0, 7.25])
def test_next_run_at_is_strictly_after_now_and_on_the_grid(offset: float) -> None:
    now = seconds(10 + offset)
    p = plan(record(next_run_at=seconds(10)), now, False, MOST)
    assert p.next_run_at > now
    k = (p.next_run_at - T0).total_seconds()
    assert k == int(k) and p.next_run_at - now <= timedelta(seconds=1)


def test_a_cron_schedule_catches_up_on_its_own_ticks() -> None:
    # every 5 minutes in UTC, down from 0:05 to 0:15:02 (0:05, 0:10 missed; 0:15 current)
    minutes = [seconds(60 * m) for m in (5, 10, 15, 20)]
    now = seconds(15 * 60 + 2)
    expected = {"NONE": minutes[2:3], "ONE": minutes[1:3], "ALL": minutes[0:3]}
    for catchup, fired in expected.items():
        s = record(cron="*/5 * * * *", next_run_at=minutes[0], catchup=catchup)
        p = plan(s, now, False, MOST)
        assert p.fire == fired, catchup
        assert p.next_run_at == minutes[3]


def test_a_cron_schedule_in_a_time_zone_ticks_at_its_local_time() -> None:
    # 09:00 in New York (EST in January, UTC-5) is 14:00 UTC
    nine = T0.replace(hour=14)
    s = record(cron="0 9 * * *", timezone="America/New_York", next_run_at=nine)
    p = plan(s, nine + timedelta(seconds=1), False, MOST)
    assert p.fire == [nine]
    assert p.next_run_at == nine + timedelta(days=1)
