"""Schedules over GraphQL with real servers (issue 18): their CRUD, what they fire and when,
validation at create time, the per-owner bound, overlap SKIP, and exactly once per tick
across several worker and api processes that crash and restart."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from gql import GraphQLRequest
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner.config import Settings
from tests.support.processes import Process, api_processes, stop, worker_process
from tests.support.schedules import (
    CREATE,
    DELETE,
    LIST,
    PAUSE,
    RESUME,
    TRIGGER,
    UPDATE,
    at,
    create,
    error_of,
    fired,
    gaps,
    get,
    schedule_input,
    tick_numbers,
)
from tests.support.servers import run_api
from tests.support.stack import Stack, make_key
from tests.support.tasks import SUBMIT, finish, task_of
from tests.support.waiting import eventually

SECOND = timedelta(seconds=1)


async def refused(stack: Stack, query: str, **variables: Any) -> dict[str, Any]:
    """The error of a call that must fail: message, code, field."""
    with pytest.raises(Exception) as err:
        await stack.execute(query, **variables)
    return error_of(err.value)


async def owners_of(engine: AsyncEngine, schedule_id: str) -> set[str]:
    """The owners of the tasks a schedule fired, as stored."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text("SELECT DISTINCT owner FROM task WHERE schedule_id = :id"), {"id": schedule_id}
        )
        return {r[0] for r in rows}


# --- create, read, list --------------------------------------------------------------------


async def test_an_every_seconds_schedule_fires_on_its_grid_as_its_owner(
    stack: Stack, engine: AsyncEngine
) -> None:
    s = await create(stack, "every second", everySeconds=1)
    assert s["everySeconds"] == 1.0 and s["cron"] is None and s["timezone"] == "UTC"
    assert s["task"] == {"echo": {"message": "tick"}}
    assert (s["paused"], s["overlap"], s["catchup"]) == (False, "ALLOW", "ONE")
    assert s["lastRunAt"] is None and s["skippedTicks"] == 0
    assert at(s["nextRunAt"]) == at(s["createdAt"]) + SECOND  # the grid starts at creation

    async def three_fired() -> bool:
        """the schedule fired 3 tasks"""
        return len(await fired(stack, s["id"])) >= 3

    await eventually(three_fired, within=10)
    tasks = await fired(stack, s["id"])
    ticks = [at(t["scheduledFor"]) for t in tasks]
    assert ticks == sorted(ticks, reverse=True) and len(set(ticks)) == len(ticks)  # newest first
    numbers = tick_numbers(s, tasks)
    assert numbers == list(range(1, len(numbers) + 1))  # each tick once, none skipped
    assert {t["scheduleId"] for t in tasks} == {s["id"]}
    for t in tasks:  # fired at its tick: not before, and promptly (a busy machine lags)
        assert timedelta(0) <= at(t["createdAt"]) - at(t["scheduledFor"]) < 2 * SECOND

    now = await get(stack, s["id"])
    assert now is not None and now["lastRunAt"] is not None
    assert at(now["lastRunAt"]) >= max(ticks)
    assert at(now["nextRunAt"]) > at(now["lastRunAt"])
    assert (at(now["nextRunAt"]) - at(s["createdAt"])) % SECOND == timedelta(0)

    # the tasks are the schedule owner's: stored as theirs, hidden from anyone else
    assert await owners_of(engine, s["id"]) == {"tester"}
    oldest = tasks[-1]["id"]
    await finish(stack, oldest)
    assert (await task_of(stack, oldest))["status"] == "SUCCEEDED"
    stranger = stack.as_key(await make_key(stack.settings, "stranger"))
    assert (await stranger.execute("query($id: ID!) { task(id: $id) { id } }", id=oldest))[
        "task"
    ] is None
    assert await get(stranger, s["id"]) is None


def next_local(now: datetime, zone: str, hour: int, minute: int) -> datetime:
    """The first hour:minute local time in `zone` after `now` (a time that exists every day)."""
    local = now.astimezone(ZoneInfo(zone))
    for days in range(3):
        day = (local + timedelta(days=days)).date()
        candidate = datetime(day.year, day.month, day.day, hour, minute, tzinfo=ZoneInfo(zone))
        if candidate > now:
            return candidate
    raise AssertionError("unreachable")


async def test_a_cron_schedule_runs_next_at_its_local_time(api: Stack) -> None:
    s = await create(api, "early", cron="30 4 * * *", timezone="America/New_York")
    assert s["cron"] == "30 4 * * *" and s["everySeconds"] is None
    assert s["timezone"] == "America/New_York"
    expected = next_local(at(s["createdAt"]), "America/New_York", 4, 30)
    assert at(s["nextRunAt"]) == expected

    quarter = await create(api, "quarterly", cron="*/15 * * * *", timezone="Europe/Berlin")
    created = at(quarter["createdAt"])
    nxt = at(quarter["nextRunAt"])
    assert created < nxt <= created + timedelta(minutes=15)
    local = nxt.astimezone(ZoneInfo("Europe/Berlin"))
    assert local.minute % 15 == 0 and local.second == 0 and local.microsecond == 0


async def test_schedule_by_id_and_schedules_newest_first_in_pages(api: Stack) -> None:
    made = [await create(api, f"s{i}", everySeconds=3600) for i in range(3)]
    found = await get(api, made[1]["id"])
    assert found == made[1]

    first = (await api.execute(LIST, first=2))["schedules"]
    assert [e["node"]["id"] for e in first["edges"]] == [made[2]["id"], made[1]["id"]]
    assert first["pageInfo"]["hasNextPage"] is True
    rest = (await api.execute(LIST, first=2, after=first["pageInfo"]["endCursor"]))["schedules"]
    assert [e["node"]["id"] for e in rest["edges"]] == [made[0]["id"]]
    assert rest["pageInfo"]["hasNextPage"] is False

    stranger = api.as_key(await make_key(api.settings, "stranger"))
    assert (await stranger.execute(LIST))["schedules"]["edges"] == []
    assert await get(stranger, made[0]["id"]) is None
    assert await get(api, "00000000-0000-0000-0000-000000000000") is None


async def test_update_schedule_replaces_its_definition_and_keeps_its_grid(api: Stack) -> None:
    s = await create(api, "hourly", everySeconds=3600)
    new = schedule_input(
        "two-hourly",
        task={"sleep": {"seconds": 1}},
        everySeconds=7200,
        overlap="SKIP",
        catchup="ALL",
        options={"priority": 3, "labels": ["nightly"]},
    )
    updated = (await api.execute(UPDATE, id=s["id"], s=new))["updateSchedule"]
    assert updated["id"] == s["id"] and updated["createdAt"] == s["createdAt"]
    assert updated["name"] == "two-hourly" and updated["everySeconds"] == 7200.0
    assert updated["task"]["sleep"]["seconds"] == 1
    assert (updated["overlap"], updated["catchup"]) == ("SKIP", "ALL")
    assert updated["options"]["priority"] == 3 and updated["options"]["labels"] == ["nightly"]
    assert at(updated["nextRunAt"]) == at(s["createdAt"]) + timedelta(seconds=7200)
    assert await get(api, s["id"]) == updated

    # a bad definition changes nothing
    bad = await refused(api, UPDATE, id=s["id"], s=schedule_input(everySeconds=0.5))
    assert bad["code"] == "BAD_INPUT" and bad["field"] == "schedule.everySeconds"
    assert await get(api, s["id"]) == updated
    missing = await refused(
        api, UPDATE, id="00000000-0000-0000-0000-000000000000", s=schedule_input(everySeconds=5)
    )
    assert missing["code"] == "NOT_FOUND"


async def test_nothing_fires_while_paused_and_resume_does_not_fire_the_paused_ticks(
    stack: Stack,
) -> None:
    s = await create(stack, "pausable", everySeconds=1, catchup="ALL")

    async def one_fired() -> bool:
        """the schedule fired a task"""
        return len(await fired(stack, s["id"])) >= 1

    await eventually(one_fired, within=10)
    paused = (await stack.execute(PAUSE, id=s["id"]))["pauseSchedule"]
    assert paused["paused"] is True
    before = tick_numbers(s, await fired(stack, s["id"]))
    await asyncio.sleep(3.2)
    assert tick_numbers(s, await fired(stack, s["id"])) == before, "fired while paused"
    assert (await get(stack, s["id"]) or {})["paused"] is True

    resumed = (await stack.execute(RESUME, id=s["id"]))["resumeSchedule"]
    assert resumed["paused"] is False
    resumed_next = at(resumed["nextRunAt"])
    assert datetime.now(UTC) - SECOND < resumed_next <= datetime.now(UTC) + 2 * SECOND

    async def fires_again() -> bool:
        """the schedule fired twice after resumeSchedule"""
        return len(await fired(stack, s["id"])) >= len(before) + 2

    await eventually(fires_again, within=10)
    after = tick_numbers(s, await fired(stack, s["id"]))
    later = after[len(before) :]
    assert after[: len(before)] == before
    # the ticks that fell while paused are not missed ones: even catchup ALL skips them
    assert later[0] == round((resumed_next - at(s["createdAt"])) / SECOND)
    assert later[0] - before[-1] >= 3
    assert later == list(range(later[0], later[0] + len(later)))


async def test_a_schedule_created_paused_fires_nothing(stack: Stack) -> None:
    s = await create(stack, "dormant", everySeconds=1, paused=True)
    assert s["paused"] is True
    await asyncio.sleep(2.5)
    assert await fired(stack, s["id"]) == []
    assert (await get(stack, s["id"]) or {})["lastRunAt"] is None


async def test_delete_schedule_removes_it_and_keeps_the_tasks_it_fired(api: Stack) -> None:
    s = await create(api, "doomed", everySeconds=3600)
    task = (await api.execute(TRIGGER, id=s["id"]))["triggerSchedule"]
    assert (await api.execute(DELETE, id=s["id"]))["deleteSchedule"] is True
    assert await get(api, s["id"]) is None
    assert (await api.execute(LIST))["schedules"]["edges"] == []
    again = await refused(api, DELETE, id=s["id"])
    assert again["code"] == "NOT_FOUND"
    kept = await api.execute("query($id: ID!) { task(id: $id) { id scheduleId } }", id=task["id"])
    assert kept["task"] == {"id": task["id"], "scheduleId": s["id"]}
    # nobody else can delete (or even see) a schedule
    other = await create(api, "mine", everySeconds=3600)
    stranger = api.as_key(await make_key(api.settings, "stranger"))
    assert (await refused(stranger, DELETE, id=other["id"]))["code"] == "NOT_FOUND"
    assert await get(api, other["id"]) is not None


async def test_trigger_schedule_fires_now_outside_its_cadence(stack: Stack) -> None:
    s = await create(stack, "manual", everySeconds=3600, paused=True)
    asked = datetime.now(UTC)
    task = (await stack.execute(TRIGGER, id=s["id"]))["triggerSchedule"]
    assert task["scheduleId"] == s["id"] and task["status"] in ("QUEUED", "RUNNING", "SUCCEEDED")
    assert abs(at(task["scheduledFor"]) - asked) < 2 * SECOND
    await finish(stack, task["id"])
    assert (await task_of(stack, task["id"]))["status"] == "SUCCEEDED"

    second = (await stack.execute(TRIGGER, id=s["id"]))["triggerSchedule"]
    now = await get(stack, s["id"])
    assert now is not None
    assert at(now["lastRunAt"]) == at(second["scheduledFor"])
    # a trigger is not a tick: the schedule stays paused with its next tick where it was
    assert now["paused"] is True and now["nextRunAt"] == s["nextRunAt"]
    assert [t["id"] for t in await fired(stack, s["id"])] == [second["id"], task["id"]]


async def test_schedule_tasks_pages_newest_tick_first(stack: Stack) -> None:
    s = await create(stack, "pages", everySeconds=1)

    async def five_fired() -> bool:
        """the schedule fired 5 tasks"""
        return len(await fired(stack, s["id"])) >= 5

    await eventually(five_fired, within=12)
    await stack.execute(PAUSE, id=s["id"])
    everything = await fired(stack, s["id"])
    paged = await fired(stack, s["id"], page=2)
    assert [t["id"] for t in paged] == [t["id"] for t in everything]
    ticks = [at(t["scheduledFor"]) for t in everything]
    assert ticks == sorted(ticks, reverse=True)


# --- validation and bounds -----------------------------------------------------------------


async def test_a_schedules_task_is_validated_as_submit_task_validates_it(api: Stack) -> None:
    bad_task = {"sleep": {"seconds": -1}}
    submitted = await refused(api, SUBMIT, task=bad_task)
    scheduled = await refused(api, CREATE, s=schedule_input(task=bad_task, everySeconds=5))
    assert submitted["code"] == scheduled["code"] == "BAD_INPUT"
    assert scheduled["field"] == f"schedule.{submitted['field']}"
    assert scheduled["message"] == f"schedule.{submitted['message']}"

    bad_options = {"priority": 1001}
    submitted = await refused(api, SUBMIT, task={"echo": {"message": "x"}}, options=bad_options)
    scheduled = await refused(api, CREATE, s=schedule_input(everySeconds=5, options=bad_options))
    assert submitted["code"] == scheduled["code"] == "BAD_INPUT"
    assert scheduled["field"] == f"schedule.{submitted['field']}"
    assert (await api.execute(LIST))["schedules"]["edges"] == []  # nothing stored


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"cron": "61 * * * *"}, "schedule.cron"),
        ({"cron": "not a cron"}, "schedule.cron"),
        ({"cron": "* * * * * *"}, "schedule.cron"),  # 6 fields: seconds are not cron's
        ({"cron": "0 9 * * *", "timezone": "Mars/Olympus_Mons"}, "schedule.timezone"),
        ({"everySeconds": 60, "timezone": "Nowhere"}, "schedule.timezone"),
        ({"everySeconds": 0.5}, "schedule.everySeconds"),
        ({"everySeconds": 0}, "schedule.everySeconds"),
        ({"everySeconds": -5}, "schedule.everySeconds"),
        ({"cron": "* * * * *", "everySeconds": 60}, ("schedule.cron", "schedule.everySeconds")),
        ({}, ("schedule.cron", "schedule.everySeconds")),
        (
            {"everySeconds": 5, "options": {"idempotencyKey": "k"}},
            "schedule.options.idempotencyKey",
        ),
        ({"everySeconds": 5, "options": {"delaySeconds": 5}}, "schedule.options.delaySeconds"),
        (
            {"everySeconds": 5, "options": {"runAt": "2030-01-01T00:00:00Z"}},
            "schedule.options.runAt",
        ),
        (
            {"everySeconds": 5, "options": {"deadline": "2030-01-01T00:00:00Z"}},
            "schedule.options.deadline",
        ),
        ({"everySeconds": 5, "name": ""}, "schedule.name"),
    ],
)
async def test_a_bad_cadence_or_option_is_bad_input_naming_the_field(
    api: Stack, fields: dict[str, Any], field: str | tuple[str, ...]
) -> None:
    got = await refused(api, CREATE, s=schedule_input(**fields))
    assert got["code"] == "BAD_INPUT", got
    expected = field if isinstance(field, tuple) else (field,)
    assert got["field"] in expected, got
    assert got["field"] in got["message"], got  # the message names it too, with the fix
    assert (await api.execute(LIST))["schedules"]["edges"] == []


async def test_schedules_per_owner_are_bounded_by_max_schedules_per_owner(
    settings: Settings,
) -> None:
    bounded = settings.model_copy(update={"max_schedules_per_owner": 2})
    async with run_api(bounded) as url:
        api = await Stack.keyed(url, bounded)
        limits = await api.execute("{ limits { maxSchedulesPerOwner } }")
        assert limits["limits"]["maxSchedulesPerOwner"] == 2
        first = await create(api, "a", everySeconds=3600)
        await create(api, "b", everySeconds=3600)
        over = await refused(api, CREATE, s=schedule_input("c", everySeconds=3600))
        assert over["code"] == "LIMIT_EXCEEDED" and "MAX_SCHEDULES_PER_OWNER" in over["message"]
        # another owner has their own bound
        other = api.as_key(await make_key(bounded, "other"))
        await create(other, "theirs", everySeconds=3600)
        # deleting one makes room
        await api.execute(DELETE, id=first["id"])
        await create(api, "c", everySeconds=3600)

        # creations at once cannot pass the bound together
        racer = api.as_key(await make_key(bounded, "racer"))
        results = await asyncio.gather(
            *(create(racer, f"r{i}", everySeconds=3600) for i in range(6)),
            return_exceptions=True,
        )
        made = [r for r in results if isinstance(r, dict)]
        assert len(made) == 2, results
        errors = [error_of(r) for r in results if isinstance(r, BaseException)]
        assert [e["code"] for e in errors] == ["LIMIT_EXCEEDED"] * 4, errors


# --- overlap SKIP ---------------------------------------------------------------------------

TICKS_SKIPPED = """
subscription {
  tasksUpdates {
    __typename taskId
    ... on TickSkipped { scheduleId scheduledFor actor { kind name } }
  }
}"""


async def test_overlap_skip_fires_nothing_while_the_last_run_is_unfinished(
    stack: Stack,
) -> None:
    seen: list[dict[str, Any]] = []
    skipped = asyncio.Event()

    async def watch() -> None:
        async with stack.ws_client() as session:
            async for item in session.subscribe(GraphQLRequest(TICKS_SKIPPED)):
                seen.append(item["tasksUpdates"])
                if item["tasksUpdates"]["__typename"] == "TickSkipped":
                    skipped.set()

    watching = asyncio.create_task(watch())
    try:
        await asyncio.sleep(0.5)  # the subscription is open before anything happens
        s = await create(
            stack, "slow", everySeconds=1, overlap="SKIP", task={"sleep": {"seconds": 2.5}}
        )
        await asyncio.wait_for(skipped.wait(), 15)

        async def two_fired() -> bool:
            """the schedule fired a second task after the first one ended"""
            return len(await fired(stack, s["id"])) >= 2

        await eventually(two_fired, within=15)
        await stack.execute(PAUSE, id=s["id"])
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching

    tasks = list(reversed(await fired(stack, s["id"])))  # oldest first
    numbers = tick_numbers(s, tasks)
    assert any(b - a > 1 for a, b in itertools.pairwise(numbers)), numbers
    for earlier, later in itertools.pairwise(tasks):
        # never two runs at once: each fired after the one before it ended
        assert earlier["finishedAt"] is not None
        assert at(later["createdAt"]) >= at(earlier["finishedAt"])

    note = next(e for e in seen if e["__typename"] == "TickSkipped")
    assert note["scheduleId"] == s["id"]
    assert note["taskId"] == tasks[0]["id"]  # noted on the run that was unfinished
    assert note["actor"] == {"kind": "SYSTEM", "name": "schedule"}
    skipped_tick = {"scheduledFor": note["scheduledFor"]}
    assert tick_numbers(s, [skipped_tick])[0] not in numbers  # a tick that did not fire

    final = await get(stack, s["id"])
    assert final is not None and final["skippedTicks"] > 0 and final["lastSkippedAt"]
    # every tick until the last fired one either fired or was skipped
    assert len(numbers) + final["skippedTicks"] >= numbers[-1] - 1


# --- exactly once, across processes ---------------------------------------------------------

CREATE_THREE = """
mutation($none: ScheduleInput!, $one: ScheduleInput!, $all: ScheduleInput!) {
  NONE: createSchedule(schedule: $none) { id createdAt everySeconds nextRunAt }
  ONE: createSchedule(schedule: $one) { id createdAt everySeconds nextRunAt }
  ALL: createSchedule(schedule: $all) { id createdAt everySeconds nextRunAt }
}"""


async def start_workers(
    stack: contextlib.AsyncExitStack, settings: Settings, count: int
) -> list[Process]:
    """`count` worker processes started at once, each stopped when `stack` closes."""
    return list(
        await asyncio.gather(
            *(stack.enter_async_context(worker_process(settings)) for _ in range(count))
        )
    )


async def wait_for_workers(api: Stack, pids: set[int]) -> None:
    async def live() -> bool:
        """every worker process sends heartbeats"""
        found = await api.execute("{ workers { pid } }")
        return pids <= {w["pid"] for w in found["workers"]}

    await eventually(live, within=30, step=0.1)


async def test_every_tick_fires_exactly_once_across_processes_that_crash_and_restart(
    settings: Settings,
) -> None:
    """The acceptance test: 3 worker and 2 api processes, three `everySeconds: 1` schedules
    (catchup NONE, ONE, ALL) created in one request, so their grids start together and they
    see the same downtime. Ticks are numbered on each grid (k s after creation); one fire_due
    round inserts its tasks with one createdAt, which tells the catch-up round apart."""
    async with contextlib.AsyncExitStack() as stack:
        # started side by side (a process takes seconds to start on a busy machine); all
        # are entered on `stack` before anything fails, so every one is stopped
        started = await asyncio.gather(
            stack.enter_async_context(api_processes(settings, 2)),
            start_workers(stack, settings, 3),
            make_key(settings),
            return_exceptions=True,
        )
        urls, first, key = started
        for outcome in started:
            if isinstance(outcome, BaseException):
                raise outcome
        assert isinstance(urls, list) and isinstance(first, list) and isinstance(key, str)
        writer, reader = (Stack(url, settings, key) for url in urls)
        await wait_for_workers(reader, {p.pid for p in first})

        made = await writer.execute(
            CREATE_THREE,
            **{
                name.lower(): schedule_input(name, everySeconds=1, catchup=name)
                for name in ("NONE", "ONE", "ALL")
            },
        )
        schedules = {name: made[name] for name in ("NONE", "ONE", "ALL")}
        created = max(at(s["createdAt"]) for s in schedules.values())

        # 10 s with 3 workers: each tick of each schedule fires once
        await asyncio.sleep(max(0.0, (created + 10.5 * SECOND - datetime.now(UTC)).total_seconds()))
        for name, s in schedules.items():
            numbers = tick_numbers(s, await fired(reader, s["id"]))
            first_ten = [k for k in numbers if k <= 10]
            assert 9 <= len(first_ten) <= 11, (name, numbers)
            assert len(set(numbers)) == len(numbers), (name, numbers)

        # a worker SIGKILLed: the other two go on, no tick lost or doubled
        first[0].send_signal(signal.SIGKILL)
        await first[0].wait()
        await asyncio.sleep(2)
        # every worker stopped for 5 s, then started again
        await asyncio.gather(*(stop(p) for p in first[1:]))
        stopped = datetime.now(UTC)
        before = {name: await fired(reader, s["id"]) for name, s in schedules.items()}
        await asyncio.sleep(5)
        restarted = datetime.now(UTC)
        second = await start_workers(stack, settings, 3)

        async def caught_up() -> bool:
            """each schedule fired again after the restart"""
            for s in schedules.values():
                if not any(at(t["createdAt"]) > restarted for t in await fired(reader, s["id"])):
                    return False
            return True

        await eventually(caught_up, within=30, step=0.1)
        await asyncio.sleep(2)  # a few ticks on time again
        after = {name: await fired(reader, s["id"]) for name, s in schedules.items()}
        assert all(p.returncode is None for p in second), "a restarted worker exited"

    rounds: dict[str, list[int]] = {}
    downtime: dict[str, list[int]] = {}
    for name, s in schedules.items():
        tasks = after[name]
        numbers = tick_numbers(s, tasks)
        assert len(set(numbers)) == len(numbers), (name, numbers)  # exactly once per tick
        # nothing fired while no worker ran (the api processes fire nothing)
        assert not [t for t in tasks if stopped < at(t["createdAt"]) < restarted], (
            f"{name}: fired while every worker was stopped"
        )
        assert tick_numbers(s, before[name]) == [
            k for k in numbers if k <= max(tick_numbers(s, before[name]))
        ], f"{name}: the past changed"
        # the first round after the restart: the tasks of one fire_due round share createdAt
        late = sorted(
            (t for t in tasks if at(t["createdAt"]) > restarted), key=lambda t: at(t["createdAt"])
        )
        first_round = [t for t in late if t["createdAt"] == late[0]["createdAt"]]
        rounds[name] = tick_numbers(s, first_round)
        last_before = max(tick_numbers(s, before[name]))
        current = max(rounds[name])
        downtime[name] = list(range(last_before + 1, current + 1))  # ticks that fell meanwhile
        # 5 s stopped, and the restart (a worker starts in seconds, more on a busy machine)
        assert 5 <= len(downtime[name]) <= 30, (name, downtime[name])
        # the ticks after the first round fire on time, one each
        assert [k for k in numbers if k >= current] == list(range(current, max(numbers) + 1))
        missing = gaps(numbers)
        if name == "ALL":
            assert rounds[name] == downtime[name]  # each missed tick and the current one
            assert missing == [], (name, missing)
            assert numbers == list(range(1, max(numbers) + 1))
        elif name == "ONE":
            assert rounds[name] == downtime[name][-2:]  # the latest missed and the current
            assert missing == [range(last_before + 1, current - 1)], (name, missing)
        else:
            assert rounds[name] == downtime[name][-1:]  # only the current tick
            assert missing == [range(last_before + 1, current)], (name, missing)
    # the three saw the same downtime (their grids start within the same request)
    lengths = [len(d) for d in downtime.values()]
    assert max(lengths) - min(lengths) <= 1, downtime
    # counts: ALL fired every tick, ONE one extra over NONE's current tick alone
    total = {name: len(after[name]) for name in schedules}
    assert (
        total["NONE"] + len(downtime["NONE"]) - 1
        == tick_numbers(schedules["NONE"], after["NONE"])[-1]
    )
    assert abs(total["ALL"] - total["ONE"] - (len(downtime["ONE"]) - 2)) <= 1, (total, downtime)
    assert abs(total["ONE"] - total["NONE"] - 1) <= 1, (total, downtime)
