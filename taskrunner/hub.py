"""One Redis pub/sub connection per process, fanned out to in-process listeners.

Each stream of the api (a subscription) listens through the hub instead of opening its
own Redis connection. A channel is subscribed while at least one listener needs it and
released when the last one leaves. Messages are hints: PostgreSQL stays the truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from taskrunner.events import Event

log = logging.getLogger(__name__)
T = TypeVar("T")


BUFFER_EVENTS = 1000  # live events buffered per subscriber
STALL_SECONDS = 5.0  # a subscriber that took nothing for this long while its buffer filled
# up has stopped reading
TIMER_SLACK = 0.005  # a timer that fires this early counts as on time
SHARED_EVENTS = 1024  # recent events handed to several consumers, remembered for `shared`


class FellBehind(Exception):
    """A subscriber stopped reading and its bounded buffer overflowed."""


@dataclass(eq=False)
class Listener(Generic[T]):
    """Live events of one channel for one consumer, in a bounded buffer (the hub's listeners
    hold `Event`s; `taskrunner.streams` also uses one as a stream's inbox of owner events).

    When the buffer overflows while the consumer keeps reading (a burst), the buffer is
    dropped and the consumer re-reads PostgreSQL. When it overflows because the consumer
    stopped reading, the consumer is told (FellBehind), so it can resume from its cursor:
    memory stays bounded and nothing is silently lost. After Redis dropped the
    connection the consumer is asked to re-read as well.

    One event is handed to every listener of its channel, so this is the hot path of a
    fan-out (1,000 subscribers of one task: 1,000 hand-overs per event). A waiting consumer
    sleeps on one future that `offer` resolves; its quiet-period timeout is one timer that
    is re-armed only when it fires (once per quiet period, not once per event).

    A producer that fails hands its error to the consumer (`fail`): its `next` raises it."""

    buffer_events: int = BUFFER_EVENTS  # capacity of `queue`
    stall_seconds: float = STALL_SECONDS
    resync: bool = False
    overflowed: bool = False
    error: Exception | None = None  # the producer's, raised by `next` (see `fail`)
    last_take: float = field(default_factory=time.monotonic)
    _waiter: asyncio.Future[None] | None = field(default=None, init=False, repr=False)
    _deadline: float = field(default=0.0, init=False, repr=False)  # loop time
    _timer: asyncio.TimerHandle | None = field(default=None, init=False, repr=False)
    # asyncio.get_running_loop() makes a getpid() system call on Python 3.11: called once
    # per listener, never once per event
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False, repr=False)
    # a plain deque, not an asyncio.Queue: one consumer, which waits on `_waiter`
    queue: deque[T] = field(default_factory=deque, init=False, repr=False)
    # the consumer's way to take an event at once while it waits (see `offer`)
    sink: Callable[[T], bool] | None = field(default=None, init=False, repr=False)
    _wait_seconds: float = field(default=0.0, init=False, repr=False)

    def offer(self, event: T) -> None:
        queue = self.queue
        sink = self.sink
        if sink is not None and not queue:
            # The consumer waits with nothing buffered: its sink may take the event now,
            # without waking it (True: taken, as if the consumer had taken it itself).
            waiter = self._waiter
            if waiter is not None and not waiter.done() and self._sink(sink, event):
                self.last_take = time.monotonic()
                self._deadline = self._loop.time() + self._wait_seconds  # type: ignore[union-attr]
                return
        if len(queue) < self.buffer_events:
            queue.append(event)
        else:
            waiting = self._waiter is not None  # a burst came in before it could take any
            if not waiting and time.monotonic() - self.last_take > self.stall_seconds:
                self.overflowed = True
            else:
                queue.clear()
                self.resync = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @staticmethod
    def _sink(sink: Callable[[T], bool], event: T) -> bool:
        try:
            return sink(event)
        except Exception:  # a bug there must not stop the fan-out: the consumer takes it
            log.exception(
                "a stream's sink failed on event %s; its consumer takes it",
                getattr(event, "id", "?"),
            )
            return False

    def fail(self, error: Exception) -> None:
        """The producer failed: the consumer's `next` raises `error` (now, if it waits)."""
        self.error = error
        self.resync = True  # takes `next` to `_reread_due`, which raises it
        self._wake()

    def request_resync(self) -> None:
        """Make the consumer re-read PostgreSQL (now, if it is waiting)."""
        self.resync = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _reread_due(self) -> bool:
        """Whether the consumer must re-read the table now (a resync, taken); FellBehind
        if it stopped reading and its buffer overflowed."""
        if self.overflowed:
            raise FellBehind
        if self.error is not None:
            raise self.error
        if self.resync:
            self.resync = False
            return True
        return False

    async def next(self, wait_seconds: float) -> T | None:
        """The next live event, or None when a re-read is due (quiet, or resync)."""
        self.last_take = time.monotonic()
        if (self.overflowed or self.resync) and self._reread_due():
            return None
        queue = self.queue
        if not queue:
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            self._wait_seconds = wait_seconds
            self._arm(loop, loop.time() + wait_seconds)
            try:
                await waiter
            finally:
                self._waiter = None
                self.last_take = time.monotonic()
            if (self.overflowed or self.resync) and self._reread_due():
                return None
            if not queue:
                return None  # quiet for wait_seconds
        return queue.popleft()

    def _arm(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        """Wake the waiter at `deadline`, keeping the armed timer when it fires no later."""
        self._deadline = deadline
        timer = self._timer
        if timer is not None:
            if timer.when() <= deadline:
                return  # it fires first and re-arms for the rest
            timer.cancel()
        self._timer = loop.call_at(deadline, self._on_timer, loop)

    def _on_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # nobody waits: the next wait arms a timer again
        if loop.time() + TIMER_SLACK >= self._deadline:
            waiter.set_result(None)
        else:
            self._timer = loop.call_at(self._deadline, self._on_timer, loop)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def drain(self) -> list[T]:
        """Everything buffered now, without waiting."""
        self.last_take = time.monotonic()
        if self.overflowed:
            raise FellBehind
        drained = list(self.queue)
        self.queue.clear()
        return drained


class EventHub:
    """Shares one Redis pub/sub connection among all streams of a process."""

    def __init__(
        self,
        redis: Redis,
        buffer_events: int = BUFFER_EVENTS,
        stall_seconds: float = STALL_SECONDS,
    ) -> None:
        self._redis = redis
        self._buffer_events = buffer_events
        self._stall_seconds = stall_seconds
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._listeners: dict[str, set[Listener[Event]]] = defaultdict(set)
        self._acks: dict[str, asyncio.Future[None]] = {}
        self._shared: dict[int, Event] = {}  # id -> event, oldest first
        self.streams = 0  # open streams in this process (for tests and metrics)
        self._lock = asyncio.Lock()
        self._home = f"taskrunner:hub:{uuid.uuid4()}"

    @property
    def buffer_events(self) -> int:
        """Live events buffered per subscriber (its streams' inboxes hold as many)."""
        return self._buffer_events

    @property
    def stall_seconds(self) -> float:
        """How long a subscriber with a full buffer may take nothing before it fell behind."""
        return self._stall_seconds

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
    async def listen(self, channel: str) -> AsyncIterator[Listener[Event]]:
        """Listen on `channel`; returns once Redis confirmed the subscription."""
        assert self._pubsub is not None, "EventHub.start() first"
        listener: Listener[Event] = Listener(
            buffer_events=self._buffer_events,
            stall_seconds=self._stall_seconds,
        )
        async with self._lock:
            first = not self._listeners[channel]
            self._listeners[channel].add(listener)
            try:
                if first:
                    ack = asyncio.get_running_loop().create_future()
                    self._acks[channel] = ack
                    await self._pubsub.subscribe(channel)
                    await asyncio.wait_for(asyncio.shield(ack), 10)
            except BaseException:
                self._acks.pop(channel, None)
                await self._release(channel, listener)
                raise
        self.streams += 1
        try:
            yield listener
        finally:
            self.streams -= 1
            listener.close()
            async with self._lock:
                await self._release(channel, listener)

    async def _release(self, channel: str, listener: Listener[Event]) -> None:
        """Forget `listener`; unsubscribe when it was the channel's last (lock held)."""
        assert self._pubsub is not None
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
                        listener.request_resync()
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
        listeners = self._listeners.get(name)
        if not listeners:
            return
        event = Event.from_json(data)
        if len(listeners) > 1:
            self.share((event,))
        for listener in listeners:
            listener.offer(event)

    def share(self, events: Iterable[Event]) -> None:
        """Note that each of `events` is one object handed to several consumers."""
        shared = self._shared
        for event in events:
            shared[id(event)] = event
        while len(shared) > SHARED_EVENTS:
            del shared[next(iter(shared))]

    def shared(self, event: Event) -> bool:
        """Whether `event` is one object handed to several consumers (recently), so what a
        consumer derives from it alone can be derived once and shared: a live event of a
        channel with several listeners, or one of a backlog read once for several streams."""
        return self._shared.get(id(event)) is event
