"""Gap-free, duplicate-free event streams: Redis pub/sub for speed, PostgreSQL for truth.

One `EventHub` per process holds a single pub/sub connection and fans messages out to
in-process listeners. A stream subscribes first, then reads the backlog from
`task_event`, then passes live events on: it drops what it already sent and re-reads the
table when a seq is skipped, when its listener overflowed, or when it has been quiet
for a while (a process may die between commit and publish).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import sqlalchemy as sa
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner.events import Event, EventKind, task_channel
from taskrunner.models import event_table, task_table
from taskrunner.states import TERMINAL, TaskStatus

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Listener:
    """Live events of one channel for one consumer. A full queue drops the event and
    flags `resync`: the consumer then re-reads PostgreSQL, so nothing is lost."""

    queue: asyncio.Queue[Event] = field(default_factory=lambda: asyncio.Queue(maxsize=1000))
    resync: bool = False

    def offer(self, event: Event) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.resync = True

    async def next(self, wait_seconds: float) -> Event | None:
        """The next live event, or None when a re-read is due (quiet, or resync)."""
        if self.resync:
            self.resync = False
            return None
        try:
            return await asyncio.wait_for(self.queue.get(), wait_seconds)
        except TimeoutError:
            return None


class EventHub:
    """Shares one Redis pub/sub connection among all streams of a process."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._listeners: dict[str, set[Listener]] = defaultdict(set)
        self._acks: dict[str, asyncio.Future[None]] = {}
        self._lock = asyncio.Lock()
        self._home = f"taskrunner:hub:{uuid.uuid4()}"

    async def start(self) -> None:
        self._pubsub = self._redis.pubsub()
        await self._pubsub.subscribe(self._home)  # keeps the connection subscribed
        self._reader = asyncio.create_task(self._read(), name="event-hub-reader")

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    @contextlib.asynccontextmanager
    async def listen(self, channel: str) -> AsyncIterator[Listener]:
        """Listen on `channel`; returns once Redis confirmed the subscription."""
        assert self._pubsub is not None, "EventHub.start() first"
        listener = Listener()
        async with self._lock:
            first = not self._listeners[channel]
            self._listeners[channel].add(listener)
            if first:
                ack = asyncio.get_running_loop().create_future()
                self._acks[channel] = ack
                await self._pubsub.subscribe(channel)
                await asyncio.wait_for(asyncio.shield(ack), 10)
        try:
            yield listener
        finally:
            async with self._lock:
                self._listeners[channel].discard(listener)
                if not self._listeners[channel]:
                    del self._listeners[channel]
                    with contextlib.suppress(Exception):
                        await self._pubsub.unsubscribe(channel)

    async def _read(self) -> None:
        assert self._pubsub is not None
        while True:
            try:
                async for message in self._pubsub.listen():
                    self._dispatch(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the connection dropped: listeners re-read, then go on
                log.warning("event hub lost its Redis connection (%s); reconnecting", exc)
                for listeners in self._listeners.values():
                    for listener in listeners:
                        listener.resync = True
                await asyncio.sleep(0.5)

    def _dispatch(self, message: dict[str, object]) -> None:
        channel = message["channel"]
        name = channel.decode() if isinstance(channel, bytes) else str(channel)
        if message["type"] == "subscribe":
            ack = self._acks.pop(name, None)
            if ack is not None and not ack.done():
                ack.set_result(None)
            return
        if message["type"] != "message":
            return
        data = message["data"]
        if not isinstance(data, bytes | str):
            return
        event = Event.from_json(data)
        for listener in self._listeners.get(name, ()):
            listener.offer(event)


def is_terminal(event: Event) -> bool:
    return event.kind is EventKind.STATUS and event.data.get("status") in TERMINAL


async def _read_backlog(
    engine: AsyncEngine, task_id: uuid.UUID, after_seq: int
) -> tuple[list[Event], TaskStatus, int]:
    """Events after `after_seq`, plus the task's status and last seq at that moment."""
    e, t = event_table.c, task_table.c
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.select(event_table)
                .where(e.task_id == task_id, e.seq > after_seq)
                .order_by(e.seq)
                .limit(500)
            )
        ).mappings()
        events = [Event.from_row(r) for r in rows]
        state = (await conn.execute(sa.select(t.status, t.event_seq).where(t.id == task_id))).one()
    return events, TaskStatus(state.status), state.event_seq


async def seq_of(engine: AsyncEngine, task_id: uuid.UUID, after_id: int | None) -> int:
    """The seq of the task's last event with id <= `after_id` (0 when none)."""
    if after_id is None:
        return 0
    e = event_table.c
    async with engine.connect() as conn:
        value = await conn.scalar(
            sa.select(sa.func.coalesce(sa.func.max(e.seq), 0)).where(
                e.task_id == task_id, e.id <= after_id
            )
        )
    return int(value or 0)


async def task_events(
    *,
    engine: AsyncEngine,
    hub: EventHub,
    task_id: uuid.UUID,
    after_id: int | None,
    quiet_seconds: float,
) -> AsyncIterator[Event]:
    """Every event of one task after `after_id`, in seq order, each once; ends after the
    terminal status event."""
    async with hub.listen(task_channel(task_id)) as listener:
        last_seq = await seq_of(engine, task_id, after_id)
        while True:
            backlog, status, newest = await _read_backlog(engine, task_id, last_seq)
            for event in backlog:
                yield event
                last_seq = event.seq
                if is_terminal(event) and event.seq == newest:
                    return
            if len(backlog) == 500:
                continue  # more backlog to page through
            if status in TERMINAL and last_seq >= newest:
                return
            while (live := await listener.next(quiet_seconds)) is not None:
                if live.seq <= last_seq:
                    continue  # already sent
                if live.seq != last_seq + 1:
                    break  # a gap: re-read the table
                yield live
                last_seq = live.seq
                if is_terminal(live):
                    return
