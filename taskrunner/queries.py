"""The task reads the API offers: one task, the tasks an owner may see, a page of tasks,
a task's events and attempt figures, a queue position. Keyword-only functions over an
engine; nothing here writes."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner.errors import BadInput, NotFound
from taskrunner.events import Event, EventKind
from taskrunner.models import TaskRecord, event_table, task_table
from taskrunner.states import TaskStatus


@dataclass(frozen=True)
class TaskCriteria:
    """Which tasks `list_tasks` (and the tasksUpdates stream) takes: every given criterion
    holds (an empty sequence or None: any)."""

    status: Sequence[TaskStatus] = ()
    type: Sequence[str] = ()
    label: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    ids: Collection[uuid.UUID] | None = None  # given: only these (empty: none)
    error_code: Sequence[str] = ()  # the code of its last error (a FAILED task's)


@dataclass
class TaskPage:
    tasks: list[TaskRecord] = field(default_factory=list)
    has_next_page: bool = False

    def cursor_of(self, task: TaskRecord) -> str:
        return encode_page_cursor(task)


def _task(row: Any) -> TaskRecord:
    return TaskRecord(**dict(row))


def visible_to(owner: str | None) -> sa.ColumnElement[bool]:
    """The tasks a caller may see: its owner's, or every task for an admin (None)."""
    return sa.true() if owner is None else task_table.c.owner == owner


async def get(*, engine: AsyncEngine, task_id: uuid.UUID, owner: str | None) -> TaskRecord | None:
    """The task, if it exists and `owner` may see it (another owner's task: None)."""
    query = sa.select(task_table).where(task_table.c.id == task_id, visible_to(owner))
    async with engine.connect() as conn:
        row = (await conn.execute(query)).mappings().first()
    return _task(row) if row else None


async def children(*, engine: AsyncEngine, parent_id: uuid.UUID, first: int) -> list[TaskRecord]:
    """The tasks `parent_id`'s body submitted (ctx.submit), oldest first, at most `first`."""
    t = task_table.c
    query = (
        sa.select(task_table)
        .where(t.parent_id == parent_id)
        .order_by(t.created_at, t.id)
        .limit(first)
    )
    async with engine.connect() as conn:
        return [_task(r) for r in (await conn.execute(query)).mappings()]


async def visible_ids(
    *, engine: AsyncEngine, ids: set[uuid.UUID], owner: str | None
) -> set[uuid.UUID]:
    """Those of `ids` that `owner` may see."""
    if owner is None or not ids:
        return set(ids)
    t = task_table.c
    async with engine.connect() as conn:
        found = await conn.scalars(sa.select(t.id).where(t.id.in_(list(ids)), t.owner == owner))
        return set(found)


async def require(*, engine: AsyncEngine, task_id: uuid.UUID, owner: str | None) -> TaskRecord:
    task = await get(engine=engine, task_id=task_id, owner=owner)
    if task is None:
        raise NotFound(f"no task with id {task_id}; check the id returned by submitTask")
    return task


def encode_page_cursor(task: TaskRecord, *, by_tick: bool = False) -> str:
    """A page's cursor: (created_at, id), or with `by_tick` (scheduled_for, id)."""
    at = task.scheduled_for if by_tick and task.scheduled_for else task.created_at
    raw = f"{at.isoformat()}|{task.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, task_id = raw.split("|", 1)
        return datetime.fromisoformat(created), uuid.UUID(task_id)
    except (ValueError, UnicodeDecodeError):
        raise BadInput(
            f"after: {cursor!r} is not a page cursor; pass pageInfo.endCursor of the previous page",
            field="after",
        ) from None


def matching(owner: str | None, filter: TaskCriteria) -> list[sa.ColumnElement[bool]]:
    """The conditions of the tasks `owner` may see that meet `filter`."""
    t = task_table.c
    where = [visible_to(owner)]
    if filter.status:
        where.append(t.status.in_([s.value for s in filter.status]))
    if filter.type:
        where.append(t.type.in_(list(filter.type)))
    if filter.label is not None:
        where.append(t.labels.contains([filter.label]))
    if filter.created_after is not None:
        where.append(t.created_at > filter.created_after)
    if filter.created_before is not None:
        where.append(t.created_at < filter.created_before)
    if filter.ids is not None:
        where.append(t.id.in_(list(filter.ids)) if filter.ids else sa.false())
    if filter.error_code:
        where.append(t.error_code.in_(list(filter.error_code)))
    return where


async def matching_tasks(
    *,
    engine: AsyncEngine,
    owner: str | None,
    filter: TaskCriteria,
    statuses: Sequence[TaskStatus],
    most: int,
    ids: Sequence[uuid.UUID] = (),
    steps: bool = True,
) -> list[TaskRecord]:
    """Up to `most` tasks of `owner` that meet `filter` and are in one of `statuses` (and,
    if given, among `ids`; without `steps`, no workflow's steps), oldest first (a bulk
    action's tasks)."""
    t = task_table.c
    query = (
        sa.select(task_table)
        .where(*matching(owner, filter), t.status.in_([s.value for s in statuses]))
        .order_by(t.created_at, t.id)
        .limit(most)
    )
    if ids:
        query = query.where(t.id.in_(list(ids)))
    if not steps:
        query = query.where(t.workflow_id.is_(None))
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    return [_task(r) for r in rows]


async def schedule_tasks(
    *, engine: AsyncEngine, schedule_id: uuid.UUID, first: int, after: str | None
) -> TaskPage:
    """The tasks a schedule fired, newest tick first (paged on (scheduled_for, id))."""
    t = task_table.c
    query = sa.select(task_table).where(t.schedule_id == schedule_id)
    if after:
        tick, task_id = decode_page_cursor(after)
        query = query.where(sa.tuple_(t.scheduled_for, t.id) < sa.tuple_(tick, task_id))
    query = query.order_by(t.scheduled_for.desc(), t.id.desc()).limit(first + 1)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    return TaskPage(tasks=[_task(r) for r in rows[:first]], has_next_page=len(rows) > first)


async def list_tasks(
    *, engine: AsyncEngine, owner: str | None, filter: TaskCriteria, first: int, after: str | None
) -> TaskPage:
    """Newest first, keyset-paged on (created_at, id): pages stay stable as tasks arrive."""
    t = task_table.c
    query = sa.select(task_table).where(*matching(owner, filter))
    if after:
        created, task_id = decode_page_cursor(after)
        query = query.where(sa.tuple_(t.created_at, t.id) < sa.tuple_(created, task_id))
    newest_first = (t.created_at.desc(), t.id.desc())
    query = query.order_by(*newest_first).limit(first + 1)
    if filter.label is not None:
        # the page's ids first, from the index that holds labels (no row fetched for each
        # one the walk passes over: a rare label passes over thousands), then their rows
        ids = query.with_only_columns(t.id).scalar_subquery()
        query = sa.select(task_table).where(t.id.in_(ids)).order_by(*newest_first)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    tasks = [_task(r) for r in rows[:first]]
    return TaskPage(tasks=tasks, has_next_page=len(rows) > first)


async def list_events(
    *, engine: AsyncEngine, task_id: uuid.UUID, after_id: int | None, first: int | None
) -> list[Event]:
    """A task's events in seq order, after the event `after_id` (ids grow with seq)."""
    e = event_table.c
    query = sa.select(event_table).where(e.task_id == task_id)
    if after_id is not None:
        query = query.where(e.id > after_id)
    query = query.order_by(e.seq)
    if first is not None:
        query = query.limit(first)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    return [Event.from_row(r) for r in rows]


async def attempt_metrics(
    *, engine: AsyncEngine, task_id: uuid.UUID
) -> list[tuple[str, datetime, dict[str, Any]]]:
    """(status, at, figures) of each finished attempt: the status events a worker wrote
    with its measurements, in order."""
    e = event_table.c
    query = (
        sa.select(e.data["status"].astext, e.at, e.data["metrics"])
        .where(
            e.task_id == task_id,
            e.kind == EventKind.STATUS.value,
            e.data.has_key("metrics"),
        )
        .order_by(e.seq)
    )
    async with engine.connect() as conn:
        return [(str(r[0]), r[1], dict(r[2])) for r in await conn.execute(query)]


async def queue_position(
    *, engine: AsyncEngine, priority: int, created_at: datetime, queue: str = "default"
) -> int:
    """For a ready QUEUED task: 1 + the ready tasks of its queue that start before it
    (higher priority, or same priority and older). Approximate: a retried task waits behind
    those enqueued before its retry."""
    t = task_table.c
    ahead = sa.select(sa.func.count()).where(
        t.status == TaskStatus.QUEUED.value,
        t.due_at.is_(None),
        t.waiting.is_(None),
        t.queue == queue,
        sa.or_(
            t.priority > priority,
            sa.and_(t.priority == priority, t.created_at < created_at),
        ),
    )
    async with engine.connect() as conn:
        return int(await conn.scalar(ahead) or 0) + 1


async def processed(
    *, engine: AsyncEngine, owner: str | None, key: str
) -> tuple[datetime | None, TaskRecord | None]:
    """For the `processed` query: when a task carrying `key` (as its idempotency key or one
    of its labels) last SUCCEEDED, and the latest task carrying it."""
    t = task_table.c
    carries = sa.and_(visible_to(owner), sa.or_(t.idempotency_key == key, t.labels.contains([key])))
    async with engine.connect() as conn:
        done_at = await conn.scalar(
            sa.select(sa.func.max(t.finished_at)).where(
                carries, t.status == TaskStatus.SUCCEEDED.value
            )
        )
        row = (
            (
                await conn.execute(
                    sa.select(task_table).where(carries).order_by(t.created_at.desc()).limit(1)
                )
            )
            .mappings()
            .first()
        )
    return done_at, _task(row) if row else None
