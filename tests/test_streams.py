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
    listener = Listener(queue=asyncio.Queue(maxsize=1))
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
