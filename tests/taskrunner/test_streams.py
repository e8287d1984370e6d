"""Streams stay gap-free when Redis loses or reorders messages: PostgreSQL is the truth."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import connections, journal
from taskrunner.changes import Change
from taskrunner.config import Settings
from taskrunner.db import create_engine
from taskrunner.events import Event, EventKind, publish
from taskrunner.hub import EventHub, FellBehind, Listener
from taskrunner.owner_streams import owner_events
from taskrunner.queries import TaskCriteria
from taskrunner.states import TaskStatus
from taskrunner.streams import task_events
from tests.support.rows import new_task
from tests.support.waiting import eventually


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.require_redis_url())
    yield client
    await client.aclose()


@pytest.fixture
async def hub(redis: Redis) -> AsyncIterator[EventHub]:
    hub = EventHub(redis)
    await hub.start()
    yield hub
    await hub.stop()


def _change(task_id: uuid.UUID, to: TaskStatus | None = None, line: str = "") -> Change:
    if to is None:
        return Change(task_id, EventKind.LOG, {"level": "info", "line": line})
    return Change(task_id, EventKind.STATUS, {"status": to.value}, to=to)


async def _commit_without_publish(engine: AsyncEngine, change: Change) -> Event:
    """What a process that dies between commit and publish leaves behind."""
    async with connections.transaction(engine) as conn:
        (outcome,) = await journal.record(conn, [change])
    assert outcome.event is not None
    return outcome.event


async def _collect(
    stream: AsyncIterator[Event], into: list[Event], seen: asyncio.Event | None = None
) -> None:
    async for event in stream:
        into.append(event)
        if seen is not None:
            seen.set()


async def test_an_event_never_published_still_arrives_after_the_quiet_period(
    engine: AsyncEngine, redis: Redis, hub: EventHub
) -> None:
    task_id = await new_task(engine)
    got: list[Event] = []
    stream = task_events(engine=engine, hub=hub, task_id=task_id, after_id=None, quiet_seconds=0.5)
    reader = asyncio.create_task(_collect(stream, got))
    await journal.apply(engine, redis, [_change(task_id, TaskStatus.RUNNING)])
    started = time.monotonic()
    await _commit_without_publish(engine, _change(task_id, TaskStatus.SUCCEEDED))
    await asyncio.wait_for(reader, 5)
    assert time.monotonic() - started < 2.5
    assert [e.data["status"] for e in got] == ["QUEUED", "RUNNING", "SUCCEEDED"]


async def test_a_skipped_seq_makes_the_stream_reread_and_duplicates_are_dropped(
    engine: AsyncEngine, redis: Redis, hub: EventHub
) -> None:
    task_id = await new_task(engine)
    await journal.apply(engine, redis, [_change(task_id, TaskStatus.RUNNING)])
    got: list[Event] = []
    stream = task_events(engine=engine, hub=hub, task_id=task_id, after_id=None, quiet_seconds=30)
    running_seen = asyncio.Event()
    reader = asyncio.create_task(_collect(stream, got, running_seen))
    async with asyncio.timeout(5):
        while len(got) < 2:
            await running_seen.wait()
            running_seen.clear()
    lost = await _commit_without_publish(engine, _change(task_id, line="lost"))
    (last,) = await journal.apply(engine, redis, [_change(task_id, TaskStatus.SUCCEEDED)])
    assert last.event is not None
    await publish(redis, [lost, last.event, lost])  # late duplicates
    await asyncio.wait_for(reader, 5)  # well before the 30 s quiet re-read
    assert [e.seq for e in got] == [1, 2, 3, 4]
    assert got[2].data["line"] == "lost"


async def test_resuming_after_the_terminal_event_completes_at_once(
    engine: AsyncEngine, redis: Redis, hub: EventHub
) -> None:
    task_id = await new_task(engine)
    await journal.apply(engine, redis, [_change(task_id, TaskStatus.CANCELLED)])
    first: list[Event] = []
    await asyncio.wait_for(
        _collect(
            task_events(engine=engine, hub=hub, task_id=task_id, after_id=None, quiet_seconds=30),
            first,
        ),
        5,
    )
    rest: list[Event] = []
    await asyncio.wait_for(
        _collect(
            task_events(
                engine=engine, hub=hub, task_id=task_id, after_id=first[-1].id, quiet_seconds=30
            ),
            rest,
        ),
        5,
    )
    assert [e.seq for e in first] == [1, 2] and rest == []


async def test_a_full_listener_reports_that_its_consumer_fell_behind() -> None:
    listener = Listener(buffer_events=1)
    event = Event.model_validate(
        {
            "id": 1,
            "task_id": uuid.uuid4(),
            "seq": 1,
            "xid": 1,
            "owner": "",
            "kind": "log",
            "at": "2026-01-01T00:00:00Z",
            "data": {},
        }
    )
    listener.offer(event)
    assert await listener.next(0.1) == event
    assert await listener.next(0.05) is None  # quiet: time to re-read
    listener.resync = True  # Redis reconnected: re-read first
    assert await listener.next(0.1) is None
    listener.offer(event)
    listener.offer(event)  # a burst overflows the buffer of 1 while it is read: re-read
    assert not listener.overflowed
    assert await listener.next(0.1) is None
    listener.stall_seconds = 0.05
    await asyncio.sleep(0.1)  # now it stops reading
    listener.offer(event)
    listener.offer(event)
    assert listener.overflowed
    with pytest.raises(FellBehind):
        await listener.next(0.1)


# --- a stream's sink: live events taken from the hub's dispatch ----------------------------


async def test_events_a_sink_takes_and_events_it_leaves_make_one_ordered_stream(
    engine: AsyncEngine, redis: Redis, hub: EventHub
) -> None:
    """The sink takes every other live line; the stream yields the rest, a gap (an event
    never published), late duplicates and the terminal event: together each event once,
    in order, and the stream still ends after the terminal one."""
    task_id = await new_task(engine)
    await journal.apply(engine, redis, [_change(task_id, TaskStatus.RUNNING)])
    taken: list[Event] = []
    order: list[int] = []

    def deliver(event: Event) -> bool:
        if event.data.get("line", "").endswith(("0", "2", "4", "6", "8")):
            taken.append(event)
            order.append(event.seq)
            return True
        return False

    yielded: list[Event] = []
    stream = task_events(
        engine=engine, hub=hub, task_id=task_id, after_id=None, quiet_seconds=30, deliver=deliver
    )

    backlog_read = asyncio.Event()

    async def collect() -> None:
        async for event in stream:
            yielded.append(event)
            order.append(event.seq)
            if len(yielded) == 2:  # QUEUED and RUNNING, from the backlog
                backlog_read.set()

    reader = asyncio.create_task(collect())
    await asyncio.wait_for(backlog_read.wait(), 5)
    published: list[Event] = []
    for n in range(10):
        (outcome,) = await journal.apply(engine, redis, [_change(task_id, line=f"line {n}")])
        assert outcome.event is not None
        published.append(outcome.event)
        await asyncio.sleep(0.02)
    lost = await _commit_without_publish(engine, _change(task_id, line="lost 2"))
    (last,) = await journal.apply(engine, redis, [_change(task_id, TaskStatus.SUCCEEDED)])
    assert last.event is not None
    await publish(redis, [published[0], lost, published[3]])  # late duplicates
    await asyncio.wait_for(reader, 5)  # well before the 30 s quiet re-read
    assert order == list(range(1, 15))  # QUEUED, RUNNING, 10 lines, lost, SUCCEEDED
    assert [e.seq for e in taken] == [3, 5, 7, 9, 11]  # lines 0, 2, 4, 6, 8, as published
    assert [e.data["line"] for e in yielded if e.kind is EventKind.LOG] == [
        "line 1", "line 3", "line 5", "line 7", "line 9", "lost 2"
    ]  # fmt: skip
    assert yielded[-1].data["status"] == "SUCCEEDED"  # the terminal event: the stream's own


TASK = uuid.uuid4()


def _event(seq: int) -> Event:
    return Event.model_validate(
        {
            "id": seq,
            "task_id": TASK,
            "seq": seq,
            "xid": 1,
            "owner": "",
            "kind": "log",
            "at": "2026-01-01T00:00:00Z",
            "data": {},
        }
    )


async def test_a_sink_takes_events_only_while_its_consumer_waits_with_nothing_buffered() -> None:
    listener = Listener(buffer_events=10)
    taken: list[int] = []
    answer = True

    def sink(event: Event) -> bool:
        if event.seq == 99:
            raise RuntimeError("a bug in a sink")
        taken.append(event.seq)
        return answer

    listener.sink = sink
    listener.offer(_event(1))  # nobody waits: buffered
    assert taken == [] and await listener.next(1) == _event(1)
    waiting = asyncio.create_task(listener.next(0.3))
    await asyncio.sleep(0)
    listener.offer(_event(2))  # taken by the sink; the consumer sleeps on
    listener.offer(_event(3))
    assert taken == [2, 3] and not waiting.done()
    answer = False
    listener.offer(_event(4))  # left: buffered, and the consumer wakes
    listener.offer(_event(5))  # something is buffered: not offered to the sink
    assert taken == [2, 3, 4]
    assert await waiting == _event(4) and await listener.next(1) == _event(5)
    waiting = asyncio.create_task(listener.next(1))
    await asyncio.sleep(0)
    listener.offer(_event(99))  # the sink failed: the consumer takes the event
    assert await waiting == _event(99)


async def test_events_a_sink_takes_keep_the_consumer_from_counting_as_quiet() -> None:
    listener = Listener()
    listener.sink = lambda event: True
    waiting = asyncio.create_task(listener.next(0.3))
    started = time.monotonic()
    for n in range(5):
        await asyncio.sleep(0.1)
        listener.offer(_event(n + 1))
    assert not waiting.done()  # 0.5 s waited, events taken 0.1 s apart: not quiet
    assert await asyncio.wait_for(waiting, 2) is None  # quiet 0.3 s after the last one
    assert time.monotonic() - started >= 0.75


# --- every task of an owner: reads shared by the owner's streams ---------------------------


async def test_owner_streams_share_their_rereads_and_each_gets_every_event_in_order(
    settings: Settings, engine: AsyncEngine, redis: Redis, hub: EventHub
) -> None:
    """200 tasksUpdates streams of one owner, started at different times, on an engine with
    a pool of 2 (+2 overflow): while quiet they re-read PostgreSQL about once per quiet
    period in all, not once each; events, published or not, reach each in order."""
    small = create_engine(settings.require_database_url(), pool_size=2)
    reads: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "FROM task_event" in statement:
            reads.append(statement)

    sa.event.listen(small.sync_engine, "before_cursor_execute", count)
    quiet = 0.25
    got: list[list[Event]] = [[] for _ in range(200)]
    collectors: list[asyncio.Task[None]] = []
    try:
        for n in range(200):
            stream = owner_events(
                engine=small, hub=hub, owner="tester", after_id=None,
                filter=TaskCriteria(), quiet_seconds=quiet,
            )  # fmt: skip
            collectors.append(asyncio.create_task(_collect(stream, got[n])))
            if n % 20 == 19:
                await asyncio.sleep(0.07)  # staggered: their quiet periods do not line up
        await asyncio.sleep(0.5)  # all started
        reads.clear()
        periods = 6
        await asyncio.sleep(periods * quiet)
        assert len(reads) <= 2 * periods + 2, f"{len(reads)} re-reads in {periods} periods"
        assert not [c for c in collectors if c.done()]  # none failed (pool timeouts ...)

        task_ids = [await new_task(engine, owner="tester") for _ in range(3)]
        await new_task(engine, owner="someone else")
        for task_id in task_ids:
            await journal.apply(engine, redis, [_change(task_id, TaskStatus.RUNNING)])
            await journal.apply(engine, redis, [_change(task_id, line="published")])
            await _commit_without_publish(engine, _change(task_id, line="never published"))
        async with engine.connect() as conn:
            expected = list(
                (
                    await conn.execute(
                        sa.text("SELECT id FROM task_event WHERE owner = 'tester' ORDER BY xid, id")
                    )
                ).scalars()
            )
        assert len(expected) == 12

        async def all_arrived() -> bool:
            """every stream got the 12 events"""
            return all(len(g) >= 12 for g in got)

        await eventually(all_arrived, 5)
        assert all([e.id for e in g] == expected for g in got)
    finally:
        for collector in collectors:
            collector.cancel()
        await asyncio.gather(*collectors, return_exceptions=True)
        await small.dispose()


async def test_owner_streams_that_resume_join_late_or_overflow_stay_exact(
    engine: AsyncEngine, redis: Redis
) -> None:
    """Beside a live stream: one resuming from a cursor catches up by itself, one started
    later gets only what comes after it, one whose small inbox overflows in a burst re-reads
    what it lost; each in order, each event once."""
    hub = EventHub(redis, buffer_events=5, stall_seconds=30)
    await hub.start()

    def stream(after_id: int | None = None) -> AsyncIterator[Event]:
        return owner_events(
            engine=engine, hub=hub, owner="tester", after_id=after_id,
            filter=TaskCriteria(), quiet_seconds=30,
        )  # fmt: skip

    async def stored() -> list[int]:
        async with engine.connect() as conn:
            query = "SELECT id FROM task_event WHERE owner = 'tester' ORDER BY xid, id"
            return list((await conn.execute(sa.text(query))).scalars())

    live: list[Event] = []
    collectors = [asyncio.create_task(_collect(stream(), live))]
    try:
        await asyncio.sleep(0.3)
        task_id = await new_task(engine, owner="tester")
        await journal.apply(engine, redis, [_change(task_id, TaskStatus.RUNNING)])
        lines = [_change(task_id, line=str(n)) for n in range(20)]
        await journal.apply(engine, redis, lines)  # one commit: a burst past the inbox of 5
        expected = await stored()
        assert len(expected) == 22

        async def live_has_all() -> bool:
            """the live stream got the burst"""
            return len(live) >= 22

        await eventually(live_has_all, 5)
        resumed: list[Event] = []
        later: list[Event] = []
        collectors.append(asyncio.create_task(_collect(stream(expected[2]), resumed)))
        collectors.append(asyncio.create_task(_collect(stream(), later)))
        await asyncio.sleep(0.3)
        await journal.apply(engine, redis, [_change(task_id, TaskStatus.SUCCEEDED)])
        expected = await stored()

        async def all_have_the_last() -> bool:
            """each stream got the last event"""
            return all(g and g[-1].id == expected[-1] for g in (live, resumed, later))

        await eventually(all_have_the_last, 5)
        assert [e.id for e in live] == expected
        assert [e.id for e in resumed] == expected[3:]
        assert [e.id for e in later] == expected[-1:]
    finally:
        for collector in collectors:
            collector.cancel()
        await asyncio.gather(*collectors, return_exceptions=True)
        await hub.stop()
