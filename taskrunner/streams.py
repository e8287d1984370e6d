"""Gap-free, duplicate-free event streams: Redis pub/sub for speed, PostgreSQL for truth.

A stream subscribes first (through the process's `EventHub`), then reads the backlog from
`task_event`, then passes live events on. It drops what it already sent and re-reads the
table when something is missing, when Redis dropped its connection, or when it has been
quiet for a while (a process may die between commit and publish). A subscriber that does
not keep up gets `LIMIT_EXCEEDED` with the cursor to resume from, never silent loss.

- `task_events` (here): one task, in `seq` order (1, 2, 3 ... so a gap is detected
  exactly).
- `owner_events` (`taskrunner.owner_streams`): every task of an owner, in (xid, id) order.

This module also holds what both kinds share: reads shared between concurrent streams
(`SharedReads`) and the answer to a subscriber that fell behind (`fell_behind`).
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner.errors import LimitExceeded
from taskrunner.events import (
    Event,
    EventKind,
    encode_cursor,
    task_channel,
)
from taskrunner.hub import EventHub, FellBehind, Listener
from taskrunner.models import event_table, task_table
from taskrunner.states import TERMINAL, TaskStatus

PAGE = 500
EVENT_COLUMNS = tuple(c.name for c in event_table.c)
HELD_BACK_RETRY_SECONDS = 0.05  # a hinted event waits for an older open transaction


def is_terminal(event: Event) -> bool:
    return event.kind is EventKind.STATUS and event.data.get("status") in TERMINAL


def fell_behind(listener: Listener[Any], last_cursor: str | None) -> LimitExceeded:
    resume = f'after: "{last_cursor}"' if last_cursor else "no `after` (nothing was sent yet)"
    return LimitExceeded(
        f"subscription fell more than {listener.buffer_events} events behind and was closed; "
        f"subscribe again with {resume} to get the rest without a gap",
        field="after",
    )


T = TypeVar("T")


class SharedReads(Generic[T]):
    """Identical reads asked for at the same time are done once (1,000 subscribers of one
    task subscribe together, and re-read together when it has been quiet).

    A caller only joins a read that has not started yet, so its result is never older
    than the call: a stream reads after it listens, and must see everything committed
    before it did. While a read of a key runs, new callers wait for the next one, which
    starts when it ends. Callers share the result: they must not change it."""

    def __init__(self) -> None:
        self._next: dict[Hashable, _Read[T]] = {}
        self._running: set[Hashable] = set()

    async def __call__(self, key: Hashable, read: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """`read()`'s result, and whether other callers got the same object."""
        pending = self._next.get(key)
        if pending is None:
            pending = self._next[key] = _Read(read)
            if key not in self._running:
                self._start(key)
        pending.callers += 1
        result = await asyncio.shield(pending.future)  # a caller leaving cancels no other
        return result, pending.callers > 1

    def _start(self, key: Hashable) -> None:
        pending = self._next.pop(key)
        self._running.add(key)
        task = asyncio.ensure_future(pending.read())

        def done(task: asyncio.Future[T]) -> None:
            self._running.discard(key)
            if task.cancelled():  # the loop is shutting down: so is the next read
                pending.future.cancel()
                if (queued := self._next.pop(key, None)) is not None:
                    queued.future.cancel()
                return
            if (error := task.exception()) is not None:
                pending.future.set_exception(error)
            else:
                pending.future.set_result(task.result())
            if key in self._next:
                self._start(key)

        task.add_done_callback(done)


class _Read(Generic[T]):
    __slots__ = ("callers", "future", "read")

    def __init__(self, read: Callable[[], Awaitable[T]]) -> None:
        self.read = read
        self.callers = 0
        self.future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self.future.add_done_callback(retrieve)


def retrieve(future: asyncio.Future[Any]) -> None:
    """Nobody may be left to await a failed read: its error is not worth a warning."""
    if not future.cancelled():
        future.exception()


# --- one task ---------------------------------------------------------------------------


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
                .limit(PAGE)
            )
        ).mappings()
        events = [Event.from_row(r) for r in rows]
        state = (await conn.execute(sa.select(t.status, t.event_seq).where(t.id == task_id))).one()
    return events, TaskStatus(state.status), state.event_seq


_backlogs: SharedReads[tuple[list[Event], TaskStatus, int]] = SharedReads()


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


class _Sent:
    """Where a task's stream is: the seq and id of the last event it passed on. Its `push`
    is the stream's sink while it waits for a live event (see `task_events`)."""

    __slots__ = ("deliver", "id", "seq")

    def __init__(self, after_id: int | None, deliver: Callable[[Event], bool]) -> None:
        self.seq, self.id, self.deliver = 0, after_id, deliver

    def push(self, event: Event) -> bool:
        seq = event.seq
        if seq <= self.seq:
            return True  # already sent: dropped, as the stream drops it
        if seq != self.seq + 1 or is_terminal(event) or not self.deliver(event):
            return False  # a gap, the end, or not deliverable now: the stream's own way
        self.seq, self.id = seq, event.id
        return True


def _not_now(event: Event) -> bool:
    return False


async def task_events(
    *,
    engine: AsyncEngine,
    hub: EventHub,
    task_id: uuid.UUID,
    after_id: int | None,
    quiet_seconds: float,
    deliver: Callable[[Event], bool] | None = None,
) -> AsyncIterator[Event]:
    """Every event of one task after `after_id`, in seq order, each once; ends after the
    terminal status event.

    With `deliver`, a live event that comes next in order (and is not the terminal one)
    while the stream waits is offered to it, from the hub's dispatch: when it answers
    True it has passed the event on, which counts as yielded; when False the stream
    yields it as usual. Either way each event is passed on once, in order."""
    sent = _Sent(after_id, deliver or _not_now)  # the cursor to resume from: sent.id
    async with hub.listen(task_channel(task_id)) as listener:
        sent.seq = await seq_of(engine, task_id, after_id)
        try:
            while True:
                (backlog, status, newest), shared = await _backlogs(
                    (engine, task_id, sent.seq),
                    functools.partial(_read_backlog, engine, task_id, sent.seq),
                )
                if shared:
                    hub.share(backlog)
                for event in backlog:
                    yield event
                    sent.seq, sent.id = event.seq, event.id
                    if is_terminal(event) and event.seq == newest:
                        return
                if len(backlog) == PAGE:
                    continue  # more backlog to page through
                if status in TERMINAL and sent.seq >= newest:
                    return
                # the hot path of a fan-out: once per live event and subscriber (the sink
                # takes events only while this waits in listener.next)
                listener.sink = sent.push if deliver is not None else None
                try:
                    while (live := await listener.next(quiet_seconds)) is not None:
                        seq = live.seq
                        if seq <= sent.seq:
                            continue  # already sent
                        if seq != sent.seq + 1:
                            break  # a gap: re-read the table
                        yield live
                        sent.seq, sent.id = seq, live.id
                        if live.kind is EventKind.STATUS and live.data.get("status") in TERMINAL:
                            # let every other stream of this event pass it on before this
                            # one ends (its teardown would delay theirs: 1,000 streams end
                            # at once)
                            await asyncio.sleep(0)
                            return
                finally:
                    listener.sink = None
        except FellBehind:
            cursor = encode_cursor(sent.id) if sent.id is not None else None
            raise fell_behind(listener, cursor) from None


# --- every task of an owner -------------------------------------------------------------
