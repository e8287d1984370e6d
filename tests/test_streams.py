"""Streams stay gap-free when Redis loses or reorders messages: PostgreSQL is the truth."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import journal
from taskrunner.config import Settings
from taskrunner.events import Event, EventKind, publish
from taskrunner.hub import EventHub, FellBehind, Listener
from taskrunner.states import TaskStatus
from taskrunner.streams import task_events
from taskrunner.tasks import Submission, _insert


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


async def _new_task(engine: AsyncEngine) -> uuid.UUID:
    async with journal.transaction(engine) as conn:
        tasks, _ = await _insert(conn, "", [Submission("echo", {"message": "x"}, 60)])
    return tasks[0].id


def _change(task_id: uuid.UUID, to: TaskStatus | None = None, line: str = "") -> journal.Change:
    if to is None:
        return journal.Change(task_id, EventKind.LOG, {"level": "info", "line": line})
    return journal.Change(task_id, EventKind.STATUS, {"status": to.value}, to=to)


async def _commit_without_publish(engine: AsyncEngine, change: journal.Change) -> Event:
    """What a process that dies between commit and publish leaves behind."""
    async with journal.transaction(engine) as conn:
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
    task_id = await _new_task(engine)
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
    task_id = await _new_task(engine)
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
    task_id = await _new_task(engine)
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
    task_id = await _new_task(engine)
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
