"""Task operations the API offers: submit, read, list, cancel. Keyword-only functions
over an engine; every change goes through the journal."""

from __future__ import annotations

import base64
import logging
import os
import uuid
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

import asyncpg
import sqlalchemy as sa
from arq import ArqRedis
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import journal, metrics, queue, tracing
from taskrunner.errors import BadInput, Conflict, NotFound
from taskrunner.events import CANCEL_CHANNEL, Event, EventKind, add_publishes
from taskrunner.groupcommit import GroupCommit, Refused
from taskrunner.journal import NOW
from taskrunner.logs import event
from taskrunner.models import Task, event_table, task_table
from taskrunner.states import CANCEL_QUEUED, TERMINAL, TaskStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submission:
    """A validated request to run `type` with `input` (already checked by its model)."""

    type: str
    input: dict[str, Any]
    timeout_seconds: int
    priority: int = 0
    max_retries: int = 0
    scheduled_for: datetime | None = None  # runAt
    delay_seconds: int | None = None  # delaySeconds: counted from the insert, on the DB clock
    idempotency_key: str | None = None
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskFilter:
    status: Sequence[TaskStatus] = ()
    type: Sequence[str] = ()
    label: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


@dataclass
class TaskPage:
    tasks: list[Task] = field(default_factory=list)
    has_next_page: bool = False

    def cursor_of(self, task: Task) -> str:
        return encode_page_cursor(task)


def _task(row: Any) -> Task:
    return Task(**dict(row))


MAX_GROUP_REQUESTS = 100  # submit() calls (up to MAX_BATCH_SIZE tasks each) in one transaction

Unit = tuple[str, Sequence[Submission], bool]  # owner, its submissions, crash_after_commit
# Live groups by (engine, Redis, arq pool), as in journal._groups: held by their users only.
_groups: weakref.WeakValueDictionary[tuple[int, int, int], GroupCommit[Unit, list[Task]]] = (
    weakref.WeakValueDictionary()
)


async def submit(
    *,
    engine: AsyncEngine,
    redis: Redis,
    pool: ArqRedis,
    owner: str,
    submissions: Sequence[Submission],
    crash_after_commit: bool = False,
) -> list[Task]:
    """Insert the tasks and their QUEUED events in one transaction, publish, then enqueue.
    A submission whose idempotency key the owner already used returns the first task.
    Concurrent submissions of this process share the transaction (group commit)."""
    key = (id(engine), id(redis), id(pool))
    group = _groups.get(key)
    if group is None:

        async def flush(units: list[Unit]) -> list[list[Task]]:
            return await _submit_now(engine, redis, pool, units)

        group = _groups[key] = GroupCommit(flush, MAX_GROUP_REQUESTS)
    return await group.submit((owner, submissions, crash_after_commit))


async def _submit_now(
    engine: AsyncEngine, redis: Redis, pool: ArqRedis, units: list[Unit]
) -> list[list[Task]]:
    async with journal.connection(engine) as conn:
        per_unit, events = await _insert_units(conn, [(owner, subs) for owner, subs, _ in units])
    if any(crash for _, _, crash in units):
        os._exit(70)  # fault injection: see Settings.test_crash_after_commit
    created = {e.task_id for e in events}  # each new task once, whoever else reused its key
    jobs = []
    for (owner, _, _), tasks in zip(units, per_unit, strict=True):
        for task in tasks:
            if task.id in created:
                created.discard(task.id)
                metrics.TASKS_SUBMITTED.labels(task.type).inc()
                event("task_submitted", task_id=str(task.id), task_type=task.type, owner=owner)
                if not task.due_at:
                    jobs.append(queue.Job(task.type, task.id, task.priority))
    try:  # publish and enqueue in one round trip
        async with pool.pipeline(transaction=False) as pipe:
            add_publishes(pipe, events)
            queue.add_enqueues(pipe, pool.default_queue_name, jobs)
            await pipe.execute()
    except Exception as exc:  # committed: the reconciler enqueues it, never fail or lose it
        log.warning("could not enqueue %d tasks (%s); the reconciler will", len(jobs), exc)
    return per_unit


async def _insert(
    conn: asyncpg.Connection, owner: str, submissions: Sequence[Submission]
) -> tuple[list[Task], list[Event]]:
    """One owner's submissions, inside the caller's transaction."""
    (tasks,), events = await _insert_units(conn, [(owner, submissions)])
    return tasks, events


TASK_COLUMNS = tuple(c.name for c in task_table.c)
# Tasks and their QUEUED events in one statement (one round trip, and a task's createdAt
# is that close to its commit). createdAt is the database clock: the group's (below) or
# clock_timestamp() at the row. Labels travel as JSON (arrays of arrays must be regular).
INSERT_TASKS = f"""
WITH s AS (
  SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::int[], $6::int[],
                       $7::int[], $8::text[], $9::jsonb[], $10::text[], $11::timestamptz[],
                       $12::timestamptz[])
    AS s(id, owner, type, input, priority, max_retries, timeout_seconds, idempotency_key,
         labels, trace_parent, scheduled_for, due_at)
),
t AS (
  INSERT INTO task (id, owner, type, status, input, priority, max_retries, timeout_seconds,
                    idempotency_key, labels, trace_parent, scheduled_for, due_at, event_seq,
                    created_at)
  SELECT id, owner, type, 'QUEUED', input, priority, max_retries, timeout_seconds,
         idempotency_key, ARRAY(SELECT jsonb_array_elements_text(labels)), trace_parent,
         scheduled_for, due_at, 1, coalesce($13::timestamptz, clock_timestamp())
  FROM s
  ON CONFLICT (owner, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
  RETURNING *
),
e AS (
  INSERT INTO task_event (task_id, seq, owner, kind, data)
  SELECT id, 1, owner, '{EventKind.STATUS.value}', '{{"status": "QUEUED"}}'::jsonb FROM t
  RETURNING id, task_id, xid, at, data
)
SELECT t.*, e.id AS e_id, e.xid AS e_xid, e.at AS e_at, e.data AS e_data
FROM t JOIN e ON e.task_id = t.id ORDER BY e.id"""
EXISTING = (
    f"SELECT {', '.join(f't.{c}' for c in TASK_COLUMNS)} FROM task t "
    "JOIN unnest($1::text[], $2::text[]) AS k(owner, key) "
    "ON t.owner = k.owner AND t.idempotency_key = k.key"
)


async def _insert_units(
    conn: asyncpg.Connection, units: Sequence[tuple[str, Sequence[Submission]]]
) -> tuple[list[list[Task]], list[Event]]:
    """Insert every unit's tasks with their QUEUED events (one statement); each unit's
    tasks in order, an already used idempotency key giving the owner's first task.

    Outside a transaction the insert commits on its own: an error raised from it is
    `Refused` (nothing was written); an error after it is not."""
    # A task that waits (delaySeconds, runAt) needs PostgreSQL's clock before the insert:
    # the whole group then shares it, and createdAt + delaySeconds is exactly the earliest
    # start. Without one, the round trip is saved.
    now: datetime | None = None
    if any(s.delay_seconds or s.scheduled_for for _, subs in units for s in subs):
        now = cast(datetime, await conn.fetchval("SELECT clock_timestamp()"))
    rows = [[_row(s, owner, now) for s in subs] for owner, subs in units]
    flat = [row for unit in rows for row in unit]
    if not flat:
        return [[] for _ in units], []
    columns = [list(column) for column in zip(*flat, strict=True)]
    try:
        found = await conn.fetch(INSERT_TASKS, *columns, now)
    except (asyncpg.PostgresError, ValueError) as exc:
        raise Refused(str(exc)) from exc
    inserted: dict[uuid.UUID, Task] = {}
    events = []
    for r in found:
        inserted[r["id"]] = Task(**{c: r[c] for c in TASK_COLUMNS})
        events.append(
            Event(
                id=r["e_id"],
                task_id=r["id"],
                seq=1,
                xid=r["e_xid"],
                owner=r["owner"],
                kind=EventKind.STATUS,
                at=r["e_at"],
                data=r["e_data"],
            )
        )
    keys = {(r[1], r[7]) for r in flat if r[0] not in inserted}
    existing: dict[tuple[str, str | None], Task] = {}
    if keys:
        owners, names = zip(*keys, strict=True)
        earlier = await conn.fetch(EXISTING, list(owners), list(names))
        existing = {(r["owner"], r["idempotency_key"]): _task(r) for r in earlier}
    tasks = [[inserted.get(r[0]) or existing[(r[1], r[7])] for r in unit] for unit in rows]
    return tasks, events


def _row(s: Submission, owner: str, now: datetime | None) -> tuple[Any, ...]:
    """INSERT_TASKS's values for one submission (one element of each array)."""
    start, due = None, None
    if now is not None:
        start = now + timedelta(seconds=s.delay_seconds) if s.delay_seconds else s.scheduled_for
        due = start if start is not None and start > now else None  # waits in PostgreSQL
    return (
        uuid.uuid4(),
        owner,
        s.type,
        journal.json_text(s.input),
        s.priority,
        s.max_retries,
        s.timeout_seconds,
        s.idempotency_key,
        journal.json_text(list(s.labels)),
        tracing.traceparent(),
        start,
        due,
    )


def visible_to(owner: str | None) -> sa.ColumnElement[bool]:
    """The tasks a caller may see: its owner's, or every task for an admin (None)."""
    return sa.true() if owner is None else task_table.c.owner == owner


async def get(*, engine: AsyncEngine, task_id: uuid.UUID, owner: str | None) -> Task | None:
    """The task, if it exists and `owner` may see it (another owner's task: None)."""
    query = sa.select(task_table).where(task_table.c.id == task_id, visible_to(owner))
    async with engine.connect() as conn:
        row = (await conn.execute(query)).mappings().first()
    return _task(row) if row else None


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


async def require(*, engine: AsyncEngine, task_id: uuid.UUID, owner: str | None) -> Task:
    task = await get(engine=engine, task_id=task_id, owner=owner)
    if task is None:
        raise NotFound(f"no task with id {task_id}; check the id returned by submitTask")
    return task


def encode_page_cursor(task: Task) -> str:
    raw = f"{task.created_at.isoformat()}|{task.id}".encode()
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


async def list_tasks(
    *, engine: AsyncEngine, owner: str | None, filter: TaskFilter, first: int, after: str | None
) -> TaskPage:
    """Newest first, keyset-paged on (created_at, id): pages stay stable as tasks arrive."""
    t = task_table.c
    query = sa.select(task_table).where(visible_to(owner))
    if filter.status:
        query = query.where(t.status.in_([s.value for s in filter.status]))
    if filter.type:
        query = query.where(t.type.in_(list(filter.type)))
    if filter.label is not None:
        query = query.where(t.labels.contains([filter.label]))
    if filter.created_after is not None:
        query = query.where(t.created_at > filter.created_after)
    if filter.created_before is not None:
        query = query.where(t.created_at < filter.created_before)
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


# A test seam: when set, `cancel` awaits it between reading the task and writing the
# cancellation, so a test can start the task in that window (tests/test_cancel_race.py).
before_cancel_write: Callable[[uuid.UUID, TaskStatus], Awaitable[None]] | None = None


async def cancel(
    *, engine: AsyncEngine, redis: Redis, pool: ArqRedis, task_id: uuid.UUID, owner: str | None
) -> Task:
    """QUEUED: CANCELLED at once, and it never runs. RUNNING: flag it and tell the workers;
    the one running it cancels the coroutine, which ends CANCELLED. Finished: CONFLICT.

    The write is conditional on the status read: a task a worker started after the read
    is not CANCELLED under its running body (CANCEL_QUEUED is QUEUED-only); it is read
    again and cancelled as a running task."""
    for _ in range(journal.MAX_TRANSACTION_RUNS):
        task = await require(engine=engine, task_id=task_id, owner=owner)
        status = TaskStatus(task.status)
        if status in TERMINAL:
            raise Conflict(
                f"task {task_id} is already {status.value}; only QUEUED or RUNNING tasks can be "
                "cancelled (retryTask runs a finished task again)"
            )
        if status is TaskStatus.RUNNING and task.cancel_requested:
            await redis.publish(CANCEL_CHANNEL, cancel_message(task_id, task.attempts))
            return task
        if before_cancel_write is not None:
            await before_cancel_write(task_id, status)
        change = _cancel_change(task_id, status, task.attempts)
        outcome = await journal.apply_one(engine, redis, change)
        if outcome.accepted:
            if status is TaskStatus.QUEUED:
                await queue.remove(pool, task_id)
            else:
                await redis.publish(CANCEL_CHANNEL, cancel_message(task_id, task.attempts))
            return await require(engine=engine, task_id=task_id, owner=owner)
    raise Conflict(f"task {task_id} kept changing state; try cancelTask again")


async def retry(
    *, engine: AsyncEngine, redis: Redis, pool: ArqRedis, task_id: uuid.UUID, owner: str | None
) -> Task:
    """Run a FAILED or CANCELLED task again, as a new attempt (its history stays)."""
    task = await require(engine=engine, task_id=task_id, owner=owner)
    change = journal.Change(
        task_id,
        EventKind.STATUS,
        {"status": TaskStatus.QUEUED.value},
        to=TaskStatus.QUEUED,
        retry_request=True,
        values={
            "due_at": None,
            "finished_at": None,
            "cancel_requested": False,
            "error_code": None,
            "error_message": None,
            "result": None,
            "progress": None,
            "progress_message": None,
            "worker_id": None,
        },
    )
    outcome = await journal.apply_one(engine, redis, change)
    if not outcome.accepted:
        found = outcome.found.value if outcome.found else "gone"
        raise Conflict(f"task {task_id} is {found}; only FAILED or CANCELLED tasks can be retried")
    await queue.enqueue(pool, [queue.Job(task.type, task.id, task.priority)])
    return await require(engine=engine, task_id=task_id, owner=owner)


async def queue_position(*, engine: AsyncEngine, priority: int, created_at: datetime) -> int:
    """For a ready QUEUED task: 1 + the ready tasks that start before it (higher priority,
    or same priority and older). Approximate: a retried task waits behind those enqueued
    before its retry."""
    t = task_table.c
    ahead = sa.select(sa.func.count()).where(
        t.status == TaskStatus.QUEUED.value,
        t.due_at.is_(None),
        sa.or_(
            t.priority > priority,
            sa.and_(t.priority == priority, t.created_at < created_at),
        ),
    )
    async with engine.connect() as conn:
        return int(await conn.scalar(ahead) or 0) + 1


async def processed(
    *, engine: AsyncEngine, owner: str | None, key: str
) -> tuple[datetime | None, Task | None]:
    """Seed 002's helpers: when a task carrying `key` (as its idempotency key or one of its
    labels) last SUCCEEDED, and the latest task carrying it."""
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


def cancel_message(task_id: uuid.UUID, attempt: int) -> str:
    """What workers hear on the cancel channel: which task, and which attempt of it (a
    late message must not cancel a later attempt after retryTask)."""
    return f"{task_id}:{attempt}"


def parse_cancel_message(text: str) -> tuple[uuid.UUID, int]:
    task_id, _, attempt = text.partition(":")
    return uuid.UUID(task_id), int(attempt)


def _cancel_change(task_id: uuid.UUID, status: TaskStatus, attempt: int) -> journal.Change:
    """The cancellation of a task found in `status` at `attempt`; refused if it moved on."""
    if status is TaskStatus.QUEUED:
        source, target = CANCEL_QUEUED
        return journal.Change(
            task_id,
            EventKind.STATUS,
            {"status": target.value},
            to=target,
            only_from=source,
            values={"cancel_requested": True, "finished_at": NOW},
        )
    return journal.Change(  # the attempt read: the cancel message names that one
        task_id,
        EventKind.LOG,
        {"level": "info", "line": "cancel requested"},
        values={"cancel_requested": True},
        expect_attempt=attempt,
    )
