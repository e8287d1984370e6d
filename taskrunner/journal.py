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
"""

from __future__ import annotations

import logging
import uuid
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import sqlalchemy as sa
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from taskrunner.events import Event, EventKind, publish
from taskrunner.groupcommit import GroupCommit, Refused
from taskrunner.models import CURRENT_XID, event_table, task_table
from taskrunner.states import TaskStatus, accepts_artifacts, accepts_events, can_move

T = TypeVar("T")
log = logging.getLogger(__name__)
MAX_TRANSACTION_RUNS = 8


NEXT_ATTEMPT: Any = object()
"""A value for `attempts` in Change.values: the locked row's attempts + 1."""


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


async def run_transaction(engine: AsyncEngine, fn: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Run `fn` in a transaction, again (bounded) when it hit an xid inversion."""
    for _ in range(MAX_TRANSACTION_RUNS - 1):
        try:
            async with engine.begin() as conn:
                return await fn(conn)
        except XidInversion:
            continue
    async with engine.begin() as conn:
        return await fn(conn)


ROW_COLUMNS = (
    "input, timeout_seconds, max_retries, cancel_requested, trace_parent, created_at, "
    "scheduled_for, clock_timestamp() AS locked_at"
)


async def lock_tasks(
    conn: AsyncConnection, ids: Sequence[uuid.UUID], *, full: bool = False
) -> dict[uuid.UUID, _Row]:
    """Lock the tasks' rows in id order; refuse (XidInversion) if one was written by a
    transaction newer than this one. `full` also reads ROW_COLUMNS."""
    extra = f", {ROW_COLUMNS}" if full else ""
    result = await conn.execute(
        sa.text(
            "SELECT id, status, event_seq, last_xid, owner, attempts, worker_id, "
            f"pg_current_xact_id()::text::bigint AS xid{extra} "
            "FROM task WHERE id = ANY(:ids) ORDER BY id FOR UPDATE"
        ),
        {"ids": sorted(set(ids))},
    )
    rows: dict[uuid.UUID, _Row] = {}
    for row in result.mappings():
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


async def insert_events(conn: AsyncConnection, rows: list[dict[str, Any]]) -> list[Event]:
    """Insert event rows (task_id, seq, owner, kind, data); return them as Events, in order."""
    if not rows:
        return []
    stmt = sa.insert(event_table).returning(*event_table.c, sort_by_parameter_order=True)
    result = await conn.execute(stmt, rows)
    return [Event.from_row(r) for r in result.mappings()]


async def record(conn: AsyncConnection, changes: Sequence[Change]) -> list[Outcome]:
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
            elif name == "worker_id" and not isinstance(value, sa.ClauseElement):
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
    """The values that are data, not SQL to evaluate (NOW, an increment ...)."""
    return {k: v for k, v in values.items() if not isinstance(v, sa.ClauseElement)}


async def _update_rows(conn: AsyncConnection, rows: Mapping[uuid.UUID, _Row]) -> None:
    """Write the changed rows: one executemany (one round trip) per shape of update.

    Rows whose updates set the same columns, with the same SQL expressions (NOW is one
    shared object), share a statement; plain values travel as parameters."""
    shapes: dict[tuple[Any, ...], list[tuple[uuid.UUID, _Row]]] = {}
    for task_id, row in rows.items():
        if row.changed:
            shape = tuple(
                sorted(
                    (name, id(value) if isinstance(value, sa.ClauseElement) else None)
                    for name, value in row.values.items()
                )
            )
            shapes.setdefault(shape, []).append((task_id, row))
    for shape, members in shapes.items():
        first = members[0][1].values
        assigned: dict[str, Any] = {"event_seq": sa.bindparam("p_event_seq")}
        for name, expression in shape:
            if expression is None:
                assigned[name] = sa.bindparam(f"p_{name}", type_=task_table.c[name].type)
            else:
                assigned[name] = first[name]
        stmt = (
            sa.update(task_table)
            .where(task_table.c.id == sa.bindparam("p_id"))
            .values(last_xid=CURRENT_XID, **assigned)
        )
        params = [
            {
                "p_id": task_id,
                "p_event_seq": row.seq,
                **{f"p_{n}": row.values[n] for n, expression in shape if expression is None},
            }
            for task_id, row in members
        ]
        await conn.execute(stmt, params)


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

    async def work(conn: AsyncConnection) -> list[Outcome]:
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
