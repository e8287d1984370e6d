"""An owner's event stream (`tasksUpdates`): every event of an owner's tasks that match a
filter, gap-free, in (xid, id) order, live.

It reads only events of transactions below the snapshot's xmin, so nothing can later
commit behind the cursor. The owner's streams in a process share one feed (`_OwnerFeed`),
which does these reads once for all of them; `taskrunner.streams` describes the guarantees
every stream keeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner.errors import BadInput
from taskrunner.events import (
    ALL_CHANNEL,
    Event,
    EventKind,
    encode_cursor,
    owner_channel,
)
from taskrunner.hub import EventHub, FellBehind, Listener
from taskrunner.models import event_table, task_table
from taskrunner.queries import TaskCriteria
from taskrunner.streams import (
    EVENT_COLUMNS,
    HELD_BACK_RETRY_SECONDS,
    PAGE,
    SharedReads,
    fell_behind,
    retrieve,
)

T = TypeVar("T")


def passes(filter: TaskCriteria, event: Event, task: dict[str, Any]) -> bool:
    """Whether an owner's event is wanted: by its task's type, label and creation time, and
    by the task's status as of the event (a status event's new status; progress and logs
    happen while RUNNING)."""
    status = event.data.get("status") if event.kind is EventKind.STATUS else "RUNNING"
    return (
        (not filter.status or status in filter.status)
        and (filter.ids is None or event.task_id in filter.ids)
        and (not filter.error_code or _error_code(event) in filter.error_code)
        and (not filter.type or task["type"] in filter.type)
        and (filter.label is None or filter.label in task["labels"])
        and (filter.created_after is None or task["created_at"] > filter.created_after)
        and (filter.created_before is None or task["created_at"] < filter.created_before)
    )


def _error_code(event: Event) -> str | None:
    """The error a status event carries (FAILED, or QUEUED for a retry), as of the event."""
    error = event.data.get("error") if event.kind is EventKind.STATUS else None
    return error.get("code") if isinstance(error, dict) else None


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
    engine: AsyncEngine,
    owner: str | None,
    position: Position,
    task_ids: frozenset[uuid.UUID] | None = None,
) -> list[tuple[Event, dict[str, Any]]]:
    """The owner's next events after `position`, from finished transactions only (only
    those of `task_ids`, if given)."""
    e, t = event_table.c, task_table.c
    query = (
        sa.select(event_table, t.type.label("task_type"), t.labels, t.created_at)
        .join(task_table, t.id == e.task_id)
        .where(
            sa.true() if owner is None else e.owner == owner,
            sa.true() if task_ids is None else e.task_id.in_(sorted(task_ids)),
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
    task_ids: frozenset[uuid.UUID] | None = None,
) -> AsyncIterator[Event]:
    """Every event of the owner's tasks that passes `filter`, after `after_id`, in (xid, id)
    order, each once (every owner's when `owner` is None); it never ends by itself.

    With `task_ids` (a workflow's steps), only their events, and without `after_id` from
    their first event on, not from now.

    The owner's feed in this process (`_OwnerFeed`) reads PostgreSQL for all the owner's
    streams and hands each its events; a stream reads the table itself only to catch up: from
    `after_id`, or after its inbox overflowed in a burst. Its order holds across processes
    and reconnects: everything comes from PostgreSQL, in (xid, id) order."""
    last_cursor = encode_cursor(after_id) if after_id is not None else None
    from_start = after_id is None and task_ids is not None
    position: Position = (0, -1)  # from_start: before every event
    if after_id is not None:  # an unknown cursor is refused before anything else
        position = await start_position(engine, after_id)

    def wanted(event: Event, task: dict[str, Any]) -> bool:
        return (task_ids is None or event.task_id in task_ids) and passes(filter, event, task)

    async with _joined(engine, hub, owner, quiet_seconds) as inbox:
        if after_id is None and not from_start:
            # Now, read after joining: at or after where the feed was when this joined (see
            # `_OwnerFeed`), so the feed hands over everything from here on.
            position, _ = await _starts(
                (engine, None), functools.partial(start_position, engine, None)
            )
        caught_up = after_id is None and not from_start
        try:
            while True:
                if not caught_up:  # its own read: from its cursor, to where the feed is
                    page = await _read_owner_page(engine, owner, position, task_ids)
                    inbox.last_take = time.monotonic()  # reading: not a stalled consumer
                    for event, task in page:
                        position = (event.xid, event.id)
                        if wanted(event, task):
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
                if wanted(event, task):
                    yield event
                    last_cursor = event.cursor
        except FellBehind:
            raise fell_behind(inbox, last_cursor) from None


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
        self.started.add_done_callback(retrieve)
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
