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
pool (`transaction`): SQLAlchemy's per-statement work (compiling, cache keys, result
proxies, its transaction bookkeeping) was two thirds of a state change's CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import jsonx, tracing
from taskrunner.events import Event, EventKind, publish
from taskrunner.groupcommit import GroupCommit, Refused
from taskrunner.states import TaskStatus, accepts_artifacts, accepts_events, can_move

T = TypeVar("T")
log = logging.getLogger(__name__)
MAX_TRANSACTION_RUNS = 8


NEXT_ATTEMPT: Any = object()
"""A value for `attempts` in Change.values: the locked row's attempts + 1."""


@dataclass(frozen=True)
class Sql:
    """A value for Change.values that PostgreSQL computes in the UPDATE: `text`, where `$`
    stands for `param` (if any)."""

    text: str
    param: Any = None


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
async def transaction(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """A transaction on one of the engine's pooled connections, used through asyncpg.

    The connection carries SQLAlchemy's codecs: a JSONB parameter is passed as JSON text
    (`json_text`), a JSONB column reads as Python values. A connection that broke or whose
    statement was interrupted is invalidated rather than returned to the pool."""
    async with engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        traced = tracing.enabled()
        try:
            async with raw.transaction():
                if traced:
                    raw.add_query_logger(tracing.query_span)
                try:
                    yield raw
                finally:
                    if traced:
                        raw.remove_query_logger(tracing.query_span)
        except BaseException as exc:
            if raw.is_closed() or isinstance(exc, asyncio.CancelledError | OSError):
                await asyncio.shield(conn.invalidate())
            raise


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
LOCK = (
    "SELECT id, status, event_seq, last_xid, owner, attempts, worker_id, "
    f"{CURRENT_XID} AS xid{{extra}} FROM task WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE"
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
            if text is None:
                takes.append(name)
                assignments.append(f"{name} = ${len(takes) + 2}")
            elif "$" in text:
                takes.append(name)
                assignments.append(f"{name} = {text.replace('$', f'${len(takes) + 2}')}")
            else:
                assignments.append(f"{name} = {text}")
        query = f"UPDATE task SET {', '.join(assignments)} WHERE id = $1"
        await conn.executemany(
            query,
            [
                (task_id, row.seq, *(_param(n, row.values[n]) for n in takes))
                for task_id, row in members
            ],
        )


def _param(column: str, value: Any) -> Any:
    if isinstance(value, Sql):
        return value.param
    return json_text(value) if column in JSONB_COLUMNS else value


def _allowed(row: _Row, change: Change) -> bool:
    if change.expect_attempt is not None and row.attempts != change.expect_attempt:
        return False
    if change.expect_worker is not None and row.worker_id != change.expect_worker:
        return False
    if change.to is None:
        if change.kind is EventKind.ARTIFACT:
            return accepts_artifacts(row.status)
        return accepts_events(row.status)
    return can_move(row.status, change.to, retry_request=change.retry_request)


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
