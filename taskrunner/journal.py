"""The write path: every change to a task is one conditional update plus one event row,
in one transaction, published only after commit.

Order rules enforced here (DESIGN.md, "Truth, queue and events"):
- the task rows are locked (in id order, so batches never deadlock) before anything is
  decided; the allowed previous states come from `states.py`;
- each event gets the task's next `seq` under that lock, so a per-task stream sees
  1, 2, 3 ... and detects a gap exactly;
- a task's events must also be in transaction-id order, because `tasksUpdates` pages by
  (xid, id). A transaction whose xid is older than the task's last writer (it took its
  xid before queueing for the lock) is rolled back and run again with a fresh xid.

The statements here are plain SQL run through asyncpg on a connection of the engine's
pool (`transaction`), without SQLAlchemy's per-statement work (compiling, cache keys,
result proxies, its transaction bookkeeping). What each transition writes (its event, its
target status, the columns it sets) is defined in `transitions.py`; this module records
any `Change`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
from redis.asyncio import Redis
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import jsonx, tracing
from taskrunner.db import unavailable
from taskrunner.events import Event, EventKind, publish
from taskrunner.groupcommit import GroupCommit, Refused
from taskrunner.models import task_table
from taskrunner.states import (
    TaskStatus,
    accepts_artifacts,
    accepts_events,
    attempt_runs,
    can_move,
)

T = TypeVar("T")
log = logging.getLogger(__name__)
MAX_TRANSACTION_RUNS = 8


NEXT_ATTEMPT: Any = object()
"""A value for `attempts` in Change.values: the locked row's attempts + 1."""


@dataclass(frozen=True)
class Sql:
    """A value for Change.values that PostgreSQL computes in the UPDATE: `text`, where `$`
    stands for `param` (if any), of SQL type `param_type`."""

    text: str
    param: Any = None
    param_type: str = "float8"


NOW = Sql("clock_timestamp()")


def seconds_from_now(seconds: float) -> Sql:
    return Sql("clock_timestamp() + make_interval(secs => $)", float(seconds))


CURRENT_XID = "pg_current_xact_id()::text::bigint"
JSONB_COLUMNS = frozenset({"input", "result"})  # of `task`; so is task_event.data


class XidInversion(Exception):
    """This transaction's id is older than the last writer of a task it changes."""


@dataclass(frozen=True)
class Change:
    """One event to record for a task; with `to`, also a status change."""

    task_id: uuid.UUID
    kind: EventKind
    data: Mapping[str, Any]
    to: TaskStatus | None = None
    retry_request: bool = False
    # With `to`: only from this status (a narrow move of states.NARROW, e.g. CANCEL_QUEUED).
    only_from: TaskStatus | None = None
    values: Mapping[str, Any] = field(default_factory=dict)
    # Only while the row is still this attempt (and, if given, this worker's): a worker
    # that was declared lost must not write over the attempt that replaced it.
    expect_attempt: int | None = None
    expect_worker: str | None = None
    # Also return the task's row as it was found under the lock (Outcome.row): a worker
    # starting an attempt needs it, and reading it here saves a query.
    want_row: bool = False


@dataclass(frozen=True)
class Outcome:
    change: Change
    found: TaskStatus | None  # the status under lock; None: no such task
    event: Event | None  # None: rejected
    row: Mapping[str, Any] | None = None  # with Change.want_row: the task as found

    @property
    def accepted(self) -> bool:
        return self.event is not None


@dataclass
class _Row:
    status: TaskStatus
    seq: int
    owner: str
    attempts: int
    worker_id: str | None
    found: Mapping[str, Any]
    values: dict[str, Any] = field(default_factory=dict)
    changed: bool = False


@contextlib.asynccontextmanager
async def connection(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """One of the engine's pooled connections, used through asyncpg (a statement run on
    it outside `transaction` commits on its own).

    The connection carries SQLAlchemy's codecs: a JSONB parameter is passed as JSON text
    (`json_text`), a JSONB column reads as Python values. Its statements are trace spans
    while tracing is on. A connection that broke or whose statement was interrupted is
    invalidated rather than returned to the pool, as is one that failed because PostgreSQL
    went away (`db.unavailable`: it may say goodbye before it closes)."""
    async with engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        traced = tracing.enabled()
        if traced:
            raw.add_query_logger(tracing.query_span)
        try:
            yield raw
        except BaseException as exc:
            if (
                raw.is_closed()
                or isinstance(exc, asyncio.CancelledError | OSError)
                or unavailable(exc)
            ):
                await asyncio.shield(conn.invalidate())
            raise
        finally:
            if traced:
                raw.remove_query_logger(tracing.query_span)


@contextlib.asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """A transaction on a `connection`."""
    async with connection(engine) as raw, raw.transaction():
        yield raw


def json_text(value: Any) -> str | None:
    """A JSONB parameter as `transaction` connections take it (None: SQL NULL)."""
    return None if value is None else jsonx.dumps(value).decode()


async def run_transaction(
    engine: AsyncEngine, fn: Callable[[asyncpg.Connection], Awaitable[T]]
) -> T:
    """Run `fn` in a transaction, again (bounded) when it hit an xid inversion."""
    for _ in range(MAX_TRANSACTION_RUNS - 1):
        try:
            async with transaction(engine) as conn:
                return await fn(conn)
        except XidInversion:
            continue
    async with transaction(engine) as conn:
        return await fn(conn)


ROW_COLUMNS = (
    "input, timeout_seconds, max_retries, cancel_requested, trace_parent, created_at, "
    "scheduled_for, clock_timestamp() AS locked_at"
)
LOCKED_COLUMNS = "id, status, event_seq, last_xid, owner, attempts, worker_id"
LOCK = (
    f"SELECT {LOCKED_COLUMNS}, {CURRENT_XID} AS xid{{extra}} "
    "FROM task WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE"
)
EVENT_COLUMNS = "id, task_id, seq, xid, owner, kind, at, data"
INSERT_EVENT = (
    "INSERT INTO task_event (task_id, seq, owner, kind, data) VALUES ($1, $2, $3, $4, $5) "
    f"RETURNING {EVENT_COLUMNS}"
)


async def lock_tasks(
    conn: asyncpg.Connection, ids: Sequence[uuid.UUID], *, full: bool = False
) -> dict[uuid.UUID, _Row]:
    """Lock the tasks' rows in id order; refuse (XidInversion) if one was written by a
    transaction newer than this one. `full` also reads ROW_COLUMNS."""
    query = LOCK.format(extra=f", {ROW_COLUMNS}" if full else "")
    rows: dict[uuid.UUID, _Row] = {}
    for row in await conn.fetch(query, sorted(set(ids))):
        if row["last_xid"] > row["xid"]:
            raise XidInversion(str(row["id"]))
        rows[row["id"]] = _Row(
            TaskStatus(row["status"]),
            row["event_seq"],
            row["owner"],
            row["attempts"],
            row["worker_id"],
            dict(row) if full else {},
        )
    return rows


async def insert_events(conn: asyncpg.Connection, rows: list[dict[str, Any]]) -> list[Event]:
    """Insert event rows (task_id, seq, owner, kind, data); return them as Events, in order
    (one round trip: asyncpg pipelines the executions)."""
    if not rows:
        return []
    args = [(r["task_id"], r["seq"], r["owner"], r["kind"], json_text(r["data"])) for r in rows]
    return [Event.from_row(r) for r in await conn.fetchmany(INSERT_EVENT, args)]


async def record(conn: asyncpg.Connection, changes: Sequence[Change]) -> list[Outcome]:
    """Apply `changes` in order inside the caller's transaction; rejected ones write nothing."""
    rows = await lock_tasks(
        conn, [c.task_id for c in changes], full=any(c.want_row for c in changes)
    )
    decided: list[tuple[Change, _Row | None, TaskStatus | None, int | None]] = []
    snapshots: dict[int, dict[str, Any]] = {}
    pending: list[dict[str, Any]] = []
    for change in changes:
        row = rows.get(change.task_id)
        found = row.status if row else None
        if row is None or not _allowed(row, change):
            decided.append((change, row, found, None))
            continue
        if change.want_row:  # the row as this change finds it, earlier changes included
            snapshots[id(change)] = {
                **row.found,
                **_plain(row.values),
                "status": row.status.value,
                "event_seq": row.seq,
                "attempts": row.attempts,
                "worker_id": row.worker_id,
            }
        row.seq += 1
        row.changed = True
        if change.to is not None:
            row.status = change.to
            row.values["status"] = change.to.value
        for name, value in change.values.items():
            if value is NEXT_ATTEMPT:
                value = row.attempts + 1
            if name == "attempts" and isinstance(value, int):
                row.attempts = value
            elif name == "worker_id" and not isinstance(value, Sql):
                row.worker_id = value
            row.values[name] = value
        pending.append(
            {
                "task_id": change.task_id,
                "seq": row.seq,
                "owner": row.owner,
                "kind": change.kind.value,
                "data": dict(change.data),
            }
        )
        decided.append((change, row, found, len(pending) - 1))

    await _update_rows(conn, rows)
    events = await insert_events(conn, pending)
    return [
        Outcome(
            change,
            found,
            None if index is None else events[index],
            snapshots.get(id(change)),
        )
        for change, row, found, index in decided
    ]


def _plain(values: Mapping[str, Any]) -> dict[str, Any]:
    """The values that are data, not SQL to evaluate (NOW, a time from now ...)."""
    return {k: v for k, v in values.items() if not isinstance(v, Sql)}


async def _update_rows(conn: asyncpg.Connection, rows: Mapping[uuid.UUID, _Row]) -> None:
    """Write the changed rows: one executemany (one round trip) per shape of update.

    Rows whose updates set the same columns, with the same SQL for the computed ones
    (`Sql` text), share a statement; values and `Sql` params travel as parameters."""
    shapes: dict[tuple[tuple[str, str | None], ...], list[tuple[uuid.UUID, _Row]]] = {}
    for task_id, row in rows.items():
        if row.changed:
            shape = tuple(
                sorted(
                    (name, value.text if isinstance(value, Sql) else None)
                    for name, value in row.values.items()
                )
            )
            shapes.setdefault(shape, []).append((task_id, row))
    for shape, members in shapes.items():
        assignments = ["event_seq = $2", f"last_xid = {CURRENT_XID}"]
        takes: list[str] = []  # the columns whose value (or Sql param) is a parameter
        for name, text in shape:
            if _takes_parameter(text):
                takes.append(name)
            assignments.append(_assignment(name, text, f"${len(takes) + 2}"))
        query = f"UPDATE task SET {', '.join(assignments)} WHERE id = $1"
        await conn.executemany(
            query,
            [
                (task_id, row.seq, *(_param(n, row.values[n]) for n in takes))
                for task_id, row in members
            ],
        )


def _takes_parameter(text: str | None) -> bool:
    """Whether a column set to a plain value (None) or to `Sql` text needs a parameter."""
    return text is None or "$" in text


def _assignment(column: str, text: str | None, parameter: str) -> str:
    """`column = ...` for a plain value (None) or `Sql` text, `parameter` standing for the
    value or the Sql's param."""
    return f"{column} = " + (text or "$").replace("$", parameter)


def _param(column: str, value: Any) -> Any:
    if isinstance(value, Sql):
        return value.param
    return json_text(value) if column in JSONB_COLUMNS else value


def _allowed(row: _Row, change: Change) -> bool:
    if change.expect_attempt is not None and (
        row.attempts != change.expect_attempt or not attempt_runs(row.status)
    ):
        return False
    if change.expect_worker is not None and row.worker_id != change.expect_worker:
        return False
    if change.to is None:
        if change.kind is EventKind.ARTIFACT:
            return accepts_artifacts(row.status)
        return accepts_events(row.status)
    return can_move(
        row.status, change.to, retry_request=change.retry_request, only_from=change.only_from
    )


# The one-statement path: a group of changes to distinct tasks whose updates have one shape
# (the same columns, the same SQL for computed ones): the lock, the checks, the update and
# the events in one round trip, atomic as a statement is. The decisions
# `record` takes in Python are made in SQL with the same inputs: the statuses each change
# may start from (from states.py), expect_attempt/expect_worker, and the xid check, which
# writes nothing at all when it fails (the statement then runs again, as a transaction).
# Several changes to one task, or mixed shapes, go through `record`.

NEXT = "+1"  # NEXT_ATTEMPT in a shape
Shape = tuple[tuple[str, str | None, str | None], ...]  # (column, Sql text | NEXT, its type)


def shape_of(change: Change) -> Shape:
    return tuple(
        sorted(
            (name, NEXT, None)
            if value is NEXT_ATTEMPT
            else (name, value.text, value.param_type)
            if isinstance(value, Sql)
            else (name, None, None)
            for name, value in change.values.items()
        )
    )


def allowed_from(change: Change) -> str:
    """The statuses a change may find its task in, as `a,b,c`."""
    return _statuses(
        change.to,
        change.kind,
        change.retry_request,
        change.only_from,
        change.expect_attempt is not None,
    )


@functools.cache
def _statuses(
    to: TaskStatus | None,
    kind: EventKind,
    retry_request: bool,
    only_from: TaskStatus | None,
    attempt_bound: bool,
) -> str:
    def allowed(s: TaskStatus) -> bool:
        if attempt_bound and not attempt_runs(s):
            return False
        if to is None:
            return accepts_artifacts(s) if kind is EventKind.ARTIFACT else accepts_events(s)
        return can_move(s, to, retry_request=retry_request, only_from=only_from)

    return ",".join(s.value for s in TaskStatus if allowed(s))


@functools.cache
def _column_type(column: str) -> str:
    dialect: Any = postgresql.dialect
    return str(task_table.c[column].type.compile(dialect=dialect()))


@functools.cache
def _statement(shape: Shape, full: bool) -> tuple[str, tuple[str, ...]]:
    """The statement for changes of `shape`, and the columns whose values (or Sql params)
    are its parameters after the first seven (one array each)."""
    arrays = ["uuid", "text", "int", "text", "text", "jsonb", "text"]
    names = ["id", "allowed", "expect_attempt", "expect_worker", "kind", "data", "to_status"]
    sets = [
        "event_seq = t.event_seq + 1",
        f"last_xid = {CURRENT_XID}",
        "status = coalesce(ok.to_status, t.status)",
    ]
    takes: list[str] = []
    for column, text, param_type in shape:
        if text == NEXT:
            sets.append(f"{column} = t.{column} + 1")
        else:
            if _takes_parameter(text):
                takes.append(column)
                arrays.append(param_type or _column_type(column))
                names.append(f"v_{column}")
            sets.append(_assignment(column, text, f"ok.v_{column}"))
    unnest = ", ".join(f"${i}::{a}[]" for i, a in enumerate(arrays, start=1))
    extra = "".join(f", t.{c.strip()}" for c in ROW_COLUMNS.split(",")) if full else ""
    extra = extra.replace("t.clock_timestamp()", "clock_timestamp()")
    locked = ", ".join(f"t.{c}" for c in LOCKED_COLUMNS.split(", "))
    statement = f"""
WITH c AS (SELECT * FROM unnest({unnest}) AS c({", ".join(names)})),
locked AS (
  SELECT {locked}, {CURRENT_XID} AS xid{extra}
  FROM task t WHERE t.id = ANY($1::uuid[]) ORDER BY t.id FOR UPDATE
),
ok AS (
  SELECT c.*, l.owner FROM locked l JOIN c ON c.id = l.id
  WHERE l.status = ANY(string_to_array(c.allowed, ','))
    AND (c.expect_attempt IS NULL OR l.attempts = c.expect_attempt)
    AND (c.expect_worker IS NULL OR l.worker_id = c.expect_worker)
    AND NOT EXISTS (SELECT FROM locked x WHERE x.last_xid > x.xid)
),
upd AS (
  UPDATE task t SET {", ".join(sets)} FROM ok WHERE t.id = ok.id RETURNING t.id, t.event_seq
),
ev AS (
  INSERT INTO task_event (task_id, seq, owner, kind, data)
  SELECT upd.id, upd.event_seq, ok.owner, ok.kind, ok.data FROM upd JOIN ok ON ok.id = upd.id
  RETURNING id, task_id, seq, xid, at, data
)
SELECT l.*, ev.id AS e_id, ev.seq AS e_seq, ev.xid AS e_xid, ev.at AS e_at, ev.data AS e_data
FROM locked l LEFT JOIN ev ON ev.task_id = l.id"""
    return statement, tuple(takes)


def one_shape(changes: Sequence[Change]) -> Shape | None:
    """The shape of `changes` when one statement can record them (see above)."""
    shape = shape_of(changes[0])
    ids = {change.task_id for change in changes}
    if len(ids) < len(changes) or any(shape_of(c) != shape for c in changes[1:]):
        return None
    return shape


async def record_group(
    engine: AsyncEngine, changes: Sequence[Change], shape: Shape
) -> list[Outcome] | None:
    """Record `changes` (of one `shape`, distinct tasks) in one statement; None when it kept
    meeting xid inversions (the caller then runs a transaction, which retries longer)."""
    full = any(c.want_row for c in changes)
    statement, takes = _statement(shape, full)
    try:
        args: list[list[Any]] = [
            [c.task_id for c in changes],
            [allowed_from(c) for c in changes],
            [c.expect_attempt for c in changes],
            [c.expect_worker for c in changes],
            [c.kind.value for c in changes],
            [json_text(dict(c.data)) for c in changes],
            [c.to.value if c.to else None for c in changes],
            *([_param(column, c.values[column]) for c in changes] for column in takes),
        ]
    except Exception as exc:  # a value that cannot be encoded
        raise Refused(str(exc)) from exc
    for _ in range(3):
        try:
            async with connection(engine) as conn:
                rows = {r["id"]: r for r in await conn.fetch(statement, *args)}
        except (asyncpg.PostgresError, ValueError) as exc:  # refused: nothing was written
            raise Refused(str(exc)) from exc
        if not any(r["last_xid"] > r["xid"] for r in rows.values()):
            break
    else:
        return None
    outcomes = []
    for change in changes:
        row = rows.get(change.task_id)
        if row is None:
            outcomes.append(Outcome(change, None, None))
            continue
        event = None
        if row["e_id"] is not None:
            event = Event(
                id=row["e_id"],
                task_id=change.task_id,
                seq=row["e_seq"],
                xid=row["e_xid"],
                owner=row["owner"],
                kind=change.kind,
                at=row["e_at"],
                data=row["e_data"],
            )
        snapshot = None
        if change.want_row:
            snapshot = {k: v for k, v in row.items() if not k.startswith("e_")}
        outcomes.append(Outcome(change, TaskStatus(row["status"]), event, snapshot))
    return outcomes


MAX_GROUP_WRITERS = 200  # apply() calls one group-commit transaction takes at most

# Live groups by (engine, Redis client). A group lives while writers use it (they and its
# flushers hold it), so an idle one is dropped with nothing pending, and a finished test's
# engine is never kept alive from here.
_groups: weakref.WeakValueDictionary[
    tuple[int, int], GroupCommit[Sequence[Change], list[Outcome]]
] = weakref.WeakValueDictionary()


def _group(engine: AsyncEngine, redis: Redis) -> GroupCommit[Sequence[Change], list[Outcome]]:
    """The group commit writers to this engine and Redis client share now."""
    group = _groups.get((id(engine), id(redis)))
    if group is None:

        async def flush(units: list[Sequence[Change]]) -> list[list[Outcome]]:
            return await _apply_now(engine, redis, units)

        group = GroupCommit(flush, max_items=MAX_GROUP_WRITERS)
        _groups[(id(engine), id(redis))] = group
    return group


async def _apply_now(
    engine: AsyncEngine, redis: Redis, units: list[Sequence[Change]]
) -> list[list[Outcome]]:
    """Record every unit's changes in one transaction, publish the accepted events, and
    split the outcomes back per unit."""
    changes = [change for unit in units for change in unit]

    async def work(conn: asyncpg.Connection) -> list[Outcome]:
        try:
            return await record(conn, changes)
        except XidInversion:
            raise
        except Exception as exc:  # before COMMIT: nothing is written, units may run alone
            raise Refused(str(exc)) from exc

    shape = one_shape(changes)
    outcomes = None
    if shape is not None:
        outcomes = await record_group(engine, changes, shape)
    if outcomes is None:
        outcomes = await run_transaction(engine, work)
    try:  # committed: publishing must not fail the writers (streams re-read the table)
        await publish(redis, [o.event for o in outcomes if o.event is not None])
    except Exception:
        log.exception("could not publish %d committed changes", len(changes))
    split, start = [], 0
    for unit in units:
        split.append(outcomes[start : start + len(unit)])
        start += len(unit)
    return split


async def apply(engine: AsyncEngine, redis: Redis, changes: Sequence[Change]) -> list[Outcome]:
    """Record `changes` in one transaction (shared with concurrent callers: group commit),
    then publish the accepted events. Returns once they are committed and published."""
    if not changes:
        return []
    return await _group(engine, redis).submit(changes)


async def apply_one(engine: AsyncEngine, redis: Redis, change: Change) -> Outcome:
    (outcome,) = await apply(engine, redis, [change])
    return outcome
