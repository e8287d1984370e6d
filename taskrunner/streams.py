"""Gap-free, duplicate-free event streams: Redis pub/sub for speed, PostgreSQL for truth.

A stream subscribes first (through the process's `EventHub`), then reads the backlog from
`task_event`, then passes live events on. It drops what it already sent and re-reads the
table when something is missing, when Redis dropped its connection, or when it has been
quiet for a while (a process may die between commit and publish). A subscriber that does
not keep up gets `LIMIT_EXCEEDED` with the cursor to resume from, never silent loss.

- `task_events`: one task, in `seq` order (1, 2, 3 ... so a gap is detected exactly).
- `owner_events`: every task of an owner, in (xid, id) order, reading only events of
  transactions below the snapshot's xmin: nothing can later commit behind the cursor. The
  owner's streams in a process share one feed, which does these reads once for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner.errors import BadInput, LimitExceeded
from taskrunner.events import (
    ALL_CHANNEL,
    Event,
    EventKind,
    encode_cursor,
    owner_channel,
    task_channel,
)
from taskrunner.hub import EventHub, FellBehind, Listener
from taskrunner.models import event_table, task_table
from taskrunner.queries import TaskCriteria
from taskrunner.states import TERMINAL, TaskStatus

PAGE = 500
EVENT_COLUMNS = tuple(c.name for c in event_table.c)
HELD_BACK_RETRY_SECONDS = 0.05  # a hinted event waits for an older open transaction


def is_terminal(event: Event) -> bool:
    return event.kind is EventKind.STATUS and event.data.get("status") in TERMINAL


def _fell_behind(listener: Listener[Any], last_cursor: str | None) -> LimitExceeded:
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
        self.future.add_done_callback(_retrieve)


def _retrieve(future: asyncio.Future[Any]) -> None:
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
            raise _fell_behind(listener, cursor) from None


# --- every task of an owner -------------------------------------------------------------


def passes(filter: TaskCriteria, event: Event, task: dict[str, Any]) -> bool:
    """Whether an owner's event is wanted: by its task's type, label and creation time, and
    by the task's status as of the event (a status event's new status; progress and logs
    happen while RUNNING)."""
    status = event.data.get("status") if event.kind is EventKind.STATUS else "RUNNING"
    return (
        (not filter.status or status in filter.status)
        and (not filter.type or task["type"] in filter.type)
        and (filter.label is None or filter.label in task["labels"])
        and (filter.created_after is None or task["created_at"] > filter.created_after)
        and (filter.created_before is None or task["created_at"] < filter.created_before)
    )


Position = tuple[int, int]  # (xid, id) of the last event passed over


async def start_position(engine: AsyncEngine, after_id: int | None) -> Position:
    """Where an owner's stream starts: after the event `after_id`, or (without it) at the
    oldest transaction still open, so only what commits from now on is streamed."""
    async with engine.connect() as conn:
        if after_id is None:
            xmin = await conn.scalar(
                sa.text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            )
            return int(xmin or 0), -1
        xid = await conn.scalar(sa.select(event_table.c.xid).where(event_table.c.id == after_id))
    if xid is None:
        raise BadInput(
            f"after: no event has the cursor {encode_cursor(after_id)}; pass the `cursor` of "
            "an event you received",
            field="after",
        )
    return int(xid), after_id


async def _read_owner_page(
    engine: AsyncEngine, owner: str | None, position: Position
) -> list[tuple[Event, dict[str, Any]]]:
    """The owner's next events after `position`, from finished transactions only."""
    e, t = event_table.c, task_table.c
    query = (
        sa.select(event_table, t.type.label("task_type"), t.labels, t.created_at)
        .join(task_table, t.id == e.task_id)
        .where(
            sa.true() if owner is None else e.owner == owner,
            sa.tuple_(e.xid, e.id) > sa.tuple_(position[0], position[1]),
            e.xid < sa.text("pg_snapshot_xmin(pg_current_snapshot())::text::bigint"),
        )
        .order_by(e.xid, e.id)
        .limit(PAGE)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    return [
        (
            Event.from_row({k: r[k] for k in EVENT_COLUMNS}),
            {"type": r["task_type"], "labels": r["labels"], "created_at": r["created_at"]},
        )
        for r in rows
    ]


async def owner_events(
    *,
    engine: AsyncEngine,
    hub: EventHub,
    owner: str | None,
    after_id: int | None,
    filter: TaskCriteria,
    quiet_seconds: float,
) -> AsyncIterator[Event]:
    """Every event of the owner's tasks that passes `filter`, after `after_id`, in (xid, id)
    order, each once (every owner's when `owner` is None); it never ends by itself.

    The owner's feed in this process (`_OwnerFeed`) reads PostgreSQL for all the owner's
    streams and hands each its events; a stream reads the table itself only to catch up: from
    `after_id`, or after its inbox overflowed in a burst. Its order holds across processes
    and reconnects: everything comes from PostgreSQL, in (xid, id) order."""
    last_cursor = encode_cursor(after_id) if after_id is not None else None
    if after_id is not None:  # an unknown cursor is refused before anything else
        position = await start_position(engine, after_id)
    async with _joined(engine, hub, owner, quiet_seconds) as inbox:
        if after_id is None:
            # Now, read after joining: at or after where the feed was when this joined (see
            # `_OwnerFeed`), so the feed hands over everything from here on.
            position, _ = await _starts(
                (engine, None), functools.partial(start_position, engine, None)
            )
        caught_up = after_id is None
        try:
            while True:
                if not caught_up:  # its own read: from its cursor, to where the feed is
                    page = await _read_owner_page(engine, owner, position)
                    inbox.last_take = time.monotonic()  # reading: not a stalled consumer
                    for event, task in page:
                        position = (event.xid, event.id)
                        if passes(filter, event, task):
                            yield event
                            last_cursor = event.cursor
                    if len(page) == PAGE:
                        continue
                    caught_up = True
                item = await inbox.next(INBOX_WAIT_SECONDS)
                if item is None:  # its inbox overflowed in a burst (or a long silence)
                    caught_up = False
                    continue
                event, task = item
                if (event.xid, event.id) <= position:
                    continue  # read already
                position = (event.xid, event.id)
                if passes(filter, event, task):
                    yield event
                    last_cursor = event.cursor
        except FellBehind:
            raise _fell_behind(inbox, last_cursor) from None


OwnerItem = tuple[Event, dict[str, Any]]  # an event and its task's type, labels, created_at
INBOX_WAIT_SECONDS = 3600.0  # a stream reads the table itself after this long without news
_starts: SharedReads[Position] = SharedReads()


class _OwnerFeed:
    """One owner's events (every owner's: owner None) read from PostgreSQL once for all the
    owner's streams in this process, and handed to each stream's inbox, in (xid, id) order.

    It listens on the owner's channel and reads the table after a message (a commit), after
    `quiet_seconds` without one (a process may die between commit and publish), and again
    soon while a hinted event is held back behind an older open transaction: what each
    stream did on its own before, done once per owner (1,000 streams of an owner cost the
    reads of one).

    No gap: a stream joins (its inbox is registered) before the feed has its start position
    or at once (nothing awaited between); everything the feed reads from then on reaches the
    inbox. A stream that starts now takes as its position the snapshot's xmin read after it
    joined, which is at or after every position the feed had reached by then; one that
    resumes from a cursor reads the table itself, after joining, up to where the feed is."""

    def __init__(
        self, engine: AsyncEngine, hub: EventHub, owner: str | None, quiet_seconds: float
    ) -> None:
        self.engine, self.hub, self.owner = engine, hub, owner
        self.quiet_seconds = quiet_seconds
        self.key = (engine, hub, owner)
        self.inboxes: set[Listener[OwnerItem]] = set()
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.started.add_done_callback(_retrieve)
        self._listener: Listener[Event] | None = None
        self.task = asyncio.create_task(self._run(), name=f"owner-feed:{owner}")
        _running.add(self.task)  # a task nothing refers to may be collected midway
        self.task.add_done_callback(_running.discard)

    def join(self) -> Listener[OwnerItem]:
        inbox: Listener[OwnerItem] = Listener(
            buffer_events=self.hub.buffer_events, stall_seconds=self.hub.stall_seconds
        )
        self.inboxes.add(inbox)
        return inbox

    def leave(self, inbox: Listener[OwnerItem]) -> None:
        self.inboxes.discard(inbox)
        inbox.close()
        if not self.inboxes:  # the last one: it ends (after the read it may be in)
            self._forget()
            if self._listener is not None:
                self._listener.request_resync()

    def _forget(self) -> None:
        if _feeds.get(self.key) is self:
            del _feeds[self.key]

    async def _run(self) -> None:
        channel = ALL_CHANNEL if self.owner is None else owner_channel(self.owner)
        try:
            async with self.hub.listen(channel) as listener:
                self._listener = listener
                position = await start_position(self.engine, None)
                self.started.set_result(None)
                await self._follow(listener, position)
        except Exception as exc:  # PostgreSQL or Redis failed: so do its streams
            self._forget()
            if not self.started.done():
                self.started.set_exception(exc)
            for inbox in self.inboxes:
                inbox.fail(exc)
        finally:
            self._forget()
            if not self.started.done():  # cancelled (the loop is closing): no one waits on
                self.started.cancel()

    async def _follow(self, listener: Listener[Event], position: Position) -> None:
        pending: set[Position] = set()  # hinted events not read yet (held back)
        retry = HELD_BACK_RETRY_SECONDS
        while self.inboxes:
            page = await _read_owner_page(self.engine, self.owner, position)
            for item in page:
                position = (item[0].xid, item[0].id)
                for inbox in self.inboxes:
                    inbox.offer(item)
            if len(page) == PAGE:
                continue
            try:
                pending = {p for p in pending if p > position}
                pending.update(p for h in listener.drain() if (p := (h.xid, h.id)) > position)
                if pending:  # an older transaction is still open: look again soon
                    wait, retry = retry, min(retry * 2, self.quiet_seconds)
                else:
                    wait, retry = self.quiet_seconds, HELD_BACK_RETRY_SECONDS
                hint = await listener.next(wait)
            except FellBehind:  # hints only wake the feed up: it reads everything anyway
                listener.overflowed = False
                listener.queue.clear()
                continue
            if hint is not None and (hint.xid, hint.id) > position:
                pending.add((hint.xid, hint.id))


_feeds: dict[tuple[AsyncEngine, EventHub, str | None], _OwnerFeed] = {}
_running: set[asyncio.Task[None]] = set()


@contextlib.asynccontextmanager
async def _joined(
    engine: AsyncEngine, hub: EventHub, owner: str | None, quiet_seconds: float
) -> AsyncIterator[Listener[OwnerItem]]:
    """An inbox of the owner's feed in this process (started for it when there is none)."""
    feed = _feeds.get((engine, hub, owner))
    if feed is None:
        feed = _feeds[(engine, hub, owner)] = _OwnerFeed(engine, hub, owner, quiet_seconds)
    inbox = feed.join()
    try:
        await asyncio.shield(feed.started)
        yield inbox
    finally:
        feed.leave(inbox)
