"""The write path: every change to a task is one conditional update plus one event row,
in one transaction, published only after commit.

Order rules enforced here (DESIGN.md, "Truth, queue and events"):
- the task rows are locked (in id order, so batches do not deadlock; a rare deadlock, as
  between the statements of `record_ends`, runs the transaction again) before anything is
  decided; the allowed previous states come from `states.py`;
- each event gets the task's next `seq` under that lock, so a per-task stream sees
  1, 2, 3 ... and detects a gap exactly;
- a task's events must also be in transaction-id order, because `tasksUpdates` pages by
  (xid, id). A transaction whose xid is older than the task's last writer (it took its
  xid before queueing for the lock) is rolled back and run again with a fresh xid.

The statements here are plain SQL run through asyncpg on a connection of the engine's
pool (`connections.transaction`). What each transition writes (its event, its target
status, the columns it sets) is defined in `transitions.py` as a `changes.Change`; this
module records any Change: in a transaction (`record`), or, for a group of changes of one
shape, in one statement (`fastpath`), which makes the same decisions in SQL. Concurrent
writers of a process share one of those (group commit, `apply`).
"""

from __future__ import annotations

import logging
import uuid
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar, cast

import asyncpg
from arq import ArqRedis
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import dag, queue
from taskrunner.changes import (
    CURRENT_XID,
    LATE,
    LOCKED_COLUMNS,
    NEXT_ATTEMPT,
    ROW_COLUMNS,
    SETTLES,
    WAITING_PARENTS,
    Change,
    Outcome,
    Sql,
    XidInversion,
    assignment,
    json_text,
    param,
    plain_values,
    takes_parameter,
)
from taskrunner.connections import transaction
from taskrunner.dag import AfterCommit
from taskrunner.events import Event, EventKind, add_publishes
from taskrunner.fastpath import one_shape, record_group, record_on
from taskrunner.groupcommit import GroupCommit, Refused
from taskrunner.states import (
    TaskStatus,
    accepts_artifacts,
    accepts_events,
    accepts_step_ready,
    attempt_runs,
    can_move,
)

T = TypeVar("T")
log = logging.getLogger(__name__)
MAX_TRANSACTION_RUNS = 8


@dataclass
class _Row:
    status: TaskStatus
    seq: int
    owner: str
    attempts: int
    worker_id: str | None
    found: Mapping[str, Any]
    workflow_id: uuid.UUID | None = None
    waiting: str | None = None
    late: bool = False  # past its deadline: it must not start (changes.LATE)
    values: dict[str, Any] = field(default_factory=dict)
    changed: bool = False


# Run again: an xid inversion, or a deadlock (a workflow's settling locks its steps after
# the rows its transaction changed; PostgreSQL breaks the rare cycle by aborting one side)
AGAIN = (XidInversion, asyncpg.DeadlockDetectedError)


async def run_transaction(
    engine: AsyncEngine, fn: Callable[[asyncpg.Connection], Awaitable[T]]
) -> T:
    """Run `fn` in a transaction, again (bounded) when it hit an xid inversion or a
    deadlock."""
    for _ in range(MAX_TRANSACTION_RUNS - 1):
        try:
            async with transaction(engine) as conn:
                return await fn(conn)
        except AGAIN:
            continue
    async with transaction(engine) as conn:
        return await fn(conn)


TAKE_SLOTS = "SELECT taskrunner_take_slots($1::uuid[])"  # migration 0009
LOCK = (
    f"SELECT {LOCKED_COLUMNS}, {CURRENT_XID} AS xid, coalesce({LATE}, false) AS late{{extra}} "
    "FROM task t WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE"
)
EVENT_COLUMNS = "id, task_id, seq, xid, owner, kind, at, data"
INSERT_EVENT = (
    "INSERT INTO task_event (task_id, seq, owner, kind, data) VALUES ($1, $2, $3, $4, $5) "
    f"RETURNING {EVENT_COLUMNS}"
)


# The workflows of these tasks, locked (in id order) before any of the tasks' rows: see
# lock_workflows.
LOCK_WORKFLOWS = (
    "SELECT id FROM workflow WHERE id IN "
    "(SELECT workflow_id FROM task WHERE id = ANY($1::uuid[])) ORDER BY id FOR UPDATE"
)


async def lock_workflows(conn: asyncpg.Connection, ids: Sequence[uuid.UUID]) -> None:
    """Lock the workflows of the tasks `ids` (steps ending here) first, before this
    transaction writes anything. Streams follow (xid, id) order, and a transaction's xid is
    taken at its first write: had the end of a step written its row before waiting for its
    workflow (which dag.settle locks), another step's end could take a later xid, commit
    first, and leave this one to make their child ready, so that the child's StepReady came
    before that other parent's end in every stream. Waiting first, the end that settles
    last also takes its xid last."""
    await conn.execute(LOCK_WORKFLOWS, sorted(set(ids)))


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
            {k: v for k, v in row.items() if k != "late"} if full else {},
            row["workflow_id"],
            row["waiting"],
            row["late"],
        )
    return rows


async def insert_events(conn: asyncpg.Connection, rows: list[dict[str, Any]]) -> list[Event]:
    """Insert event rows (task_id, seq, owner, kind, data); return them as Events, in order
    (one round trip: asyncpg pipelines the executions)."""
    if not rows:
        return []
    args = [(r["task_id"], r["seq"], r["owner"], r["kind"], json_text(r["data"])) for r in rows]
    return [Event.from_row(r) for r in await conn.fetchmany(INSERT_EVENT, args)]


async def record(
    conn: asyncpg.Connection,
    changes: Sequence[Change],
    after: AfterCommit | None = None,
    *,
    settle: bool = True,
) -> list[Outcome]:
    """Apply `changes` in order inside the caller's transaction; rejected ones write nothing.
    Starts that take a concurrency slot (Change.take_slot) are checked first, before any
    row is locked (as in the one-statement path); those without one are held back.

    A workflow step that ends is settled here, in the same transaction (`settle`:
    dag.settle): its workflow's steps that became ready, or are cancelled by its
    failure, and the workflow's own end. What that needs once committed (their events'
    publishing, the ready steps' enqueueing) is added to `after` (None: left to the
    streams' re-reads and the reconciler)."""
    limited = [c.task_id for c in changes if c.take_slot]
    if limited:
        held = set(await conn.fetchval(TAKE_SLOTS, limited) or ())
        rest = [replace(c, take_slot=False) for c in changes if c.task_id not in held]
        kept = iter(await record(conn, rest, after, settle=settle))
        return [
            Outcome(c, TaskStatus.QUEUED, None, held_back=True)
            if c.task_id in held
            else replace(next(kept), change=c)
            for c in changes
        ]
    if settle and any(c.step and c.to in SETTLES for c in changes):
        await lock_workflows(conn, [c.task_id for c in changes if c.step])
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
                **plain_values(row.values),
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
    if settle:
        ended = {  # a workflow, and a step of it that ended (or was re-queued) here
            row.workflow_id: change.task_id
            for change, row, _, index in decided
            if index is not None
            and row is not None
            and row.workflow_id is not None
            and change.to in SETTLES
        }
        if ended:
            await dag.settle(conn, ended, after or AfterCommit())
    return [
        Outcome(
            change,
            found,
            None if index is None else events[index],
            snapshots.get(id(change)),
        )
        for change, row, found, index in decided
    ]


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
            if takes_parameter(text):
                takes.append(name)
            assignments.append(assignment(name, text, f"${len(takes) + 2}"))
        query = f"UPDATE task SET {', '.join(assignments)} WHERE id = $1"
        await conn.executemany(
            query,
            [
                (task_id, row.seq, *(param(n, row.values[n]) for n in takes))
                for task_id, row in members
            ],
        )


def _allowed(row: _Row, change: Change) -> bool:
    if change.expect_attempt is not None and (
        row.attempts != change.expect_attempt or not attempt_runs(row.status)
    ):
        return False
    if change.expect_worker is not None and row.worker_id != change.expect_worker:
        return False
    if change.to is TaskStatus.RUNNING and (row.waiting == WAITING_PARENTS or row.late):
        return False  # a step starts only once its parents SUCCEEDED; none past its deadline
    if change.to is None:
        if change.kind is EventKind.WORKFLOW:
            return True
        if change.kind is EventKind.STEP_READY:
            return accepts_step_ready(row.status) and row.waiting == WAITING_PARENTS
        if change.kind in (EventKind.ARTIFACT, EventKind.SCHEDULE):
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


MAX_GROUP_WRITERS = 200  # apply() calls one group-commit transaction takes at most

# Live groups by (engine, Redis client). A group lives while writers use it (they and its
# flushers hold it), so an idle one is dropped with nothing pending, and a finished test's
# engine is never kept alive from here.
# a unit's result: its outcomes, or the error that its part of the group met
UnitResult = list[Outcome] | Exception
_groups: weakref.WeakValueDictionary[tuple[int, int], GroupCommit[Sequence[Change], UnitResult]] = (
    weakref.WeakValueDictionary()
)


def _group(engine: AsyncEngine, redis: Redis) -> GroupCommit[Sequence[Change], UnitResult]:
    """The group commit writers to this engine and Redis client share now."""
    group = _groups.get((id(engine), id(redis)))
    if group is None:

        async def flush(units: list[Sequence[Change]]) -> list[UnitResult]:
            return await _apply_now(engine, redis, units)

        group = GroupCommit(flush, max_items=MAX_GROUP_WRITERS)
        _groups[(id(engine), id(redis))] = group
    return group


async def _apply_now(
    engine: AsyncEngine, redis: Redis, units: list[Sequence[Change]]
) -> list[UnitResult]:
    """Record every unit's changes in one transaction, publish the accepted events, and
    split the outcomes back per unit."""
    changes = [change for unit in units for change in unit]
    after = AfterCommit()

    async def in_transaction(todo: Sequence[Change], settling: bool = False) -> list[Outcome]:
        async def work(conn: asyncpg.Connection) -> list[Outcome]:
            after.clear()  # a run again starts over
            try:
                if settling:  # workflow steps' moves, of distinct tasks: see record_ends
                    return await record_ends(conn, todo, after)
                return await record(conn, todo, after)
            except AGAIN:
                raise
            except Exception as exc:  # before COMMIT: nothing is written, units may run alone
                raise Refused(str(exc)) from exc

        return await run_transaction(engine, work)

    if _settled_together(changes):
        outcomes = await in_transaction(changes, settling=True)
        await after_commit(redis, [o.event for o in outcomes if o.event is not None], after)
        return _split(units, outcomes)
    shape = one_shape(changes)
    found = None
    if shape is not None:
        found = await record_group(engine, changes, shape)
    if found is None:
        outcomes = await in_transaction(changes)
    else:
        # the ends of workflow steps were left out of the statement: they are settled in a
        # transaction (dag.settle)
        deferred = [c for c, o in zip(changes, found, strict=True) if o is None]
        try:
            settled = iter(await in_transaction(deferred, settling=True) if deferred else [])
        except Exception as exc:
            # the statement committed the others: they are answered and published; only
            # the units with a deferred change get the error (nothing of theirs committed
            # in that transaction: their writers may try again)
            return await _partly(redis, units, found, exc)
        outcomes = [o if o is not None else next(settled) for o in found]
    await after_commit(redis, [o.event for o in outcomes if o.event is not None], after)
    return _split(units, outcomes)


def _split(units: list[Sequence[Change]], outcomes: list[Outcome]) -> list[UnitResult]:
    """The outcomes of a group, per unit."""
    split: list[UnitResult] = []
    start = 0
    for unit in units:
        split.append(outcomes[start : start + len(unit)])
        start += len(unit)
    return split


def _settled_together(changes: Sequence[Change]) -> bool:
    """Whether the group has the end of a task known to be a step (Change.step), and can
    be recorded as `record_ends` does (distinct tasks, none taking a concurrency slot):
    then all of it is, in the transaction that settles it, rather than in one statement
    that would leave the steps' ends out for a transaction of their own."""
    return (
        any(c.step and c.to in SETTLES for c in changes)
        and not any(c.take_slot for c in changes)
        and len({c.task_id for c in changes}) == len(changes)
    )


async def _partly(
    redis: Redis, units: list[Sequence[Change]], found: list[Outcome | None], error: Exception
) -> list[UnitResult]:
    """The results of a group whose statement committed but whose deferred step moves
    failed: the error for the units with one of those, the outcomes for the others."""
    committed = [o for o in found if o is not None]
    await after_commit(redis, [o.event for o in committed if o.event is not None], AfterCommit())
    reason = error.__cause__ if isinstance(error, Refused) and error.__cause__ else error
    split: list[UnitResult] = []
    start = 0
    for unit in units:
        part = found[start : start + len(unit)]
        start += len(unit)
        done = [o for o in part if o is not None]
        split.append(done if len(done) == len(part) else reason)  # type: ignore[arg-type]
    return split


async def record_ends(
    conn: asyncpg.Connection, changes: Sequence[Change], after: AfterCommit
) -> list[Outcome]:
    """`record` for changes of distinct tasks, none taking a concurrency slot, among them
    ends of workflow steps (those the one-statement path left out, or a whole group with a
    step's end: `_settled_together`): one statement per shape, run in the caller's
    transaction, then their workflows settled (dag.settle). Each statement locks its rows
    in id order, but two shapes lock theirs one after the other: a deadlock with another
    transaction is possible, and it runs again (AGAIN), at the cost of deadlock_timeout."""
    await lock_workflows(conn, [c.task_id for c in changes if c.to in SETTLES])
    outcomes, steps = await record_on(conn, changes)
    ended = {
        steps[o.change.task_id]: o.change.task_id
        for o in outcomes
        if o.change.task_id in steps and o.change.to in SETTLES
    }
    if ended:
        await dag.settle(conn, ended, after)
    return outcomes


async def after_commit(redis: Redis, events: Sequence[Event], after: AfterCommit) -> None:
    """Once committed: publish the events (and those of what settling did) and enqueue the
    workflow steps that became ready, in one round trip. Never fails: streams re-read the
    table, and the reconciler enqueues a ready step that Redis lacks."""
    events = [*events, *after.events]
    jobs = after.jobs if isinstance(redis, ArqRedis) else []
    if not events and not jobs:
        return
    try:
        async with redis.pipeline(transaction=False) as pipe:
            add_publishes(pipe, events)
            if jobs:
                queue.add_enqueues(pipe, cast(ArqRedis, redis).default_queue_name, jobs)
            await pipe.execute()
    except Exception as exc:
        log.warning(
            "could not publish %d committed changes or enqueue %d ready steps (%s); streams "
            "re-read them, and the reconciler enqueues the steps",
            len(events),
            len(jobs),
            exc,
        )


async def transact(
    engine: AsyncEngine,
    redis: Redis,
    fn: Callable[[asyncpg.Connection, AfterCommit], Awaitable[T]],
) -> T:
    """Run `fn` in a transaction (again on an xid inversion or a deadlock), handing it an
    `AfterCommit` to fill; once committed, do what it holds (`after_commit`)."""
    after = AfterCommit()

    async def work(conn: asyncpg.Connection) -> T:
        after.clear()
        return await fn(conn, after)

    result = await run_transaction(engine, work)
    await after_commit(redis, [], after)
    return result


async def apply(engine: AsyncEngine, redis: Redis, changes: Sequence[Change]) -> list[Outcome]:
    """Record `changes` in one transaction (shared with concurrent callers: group commit),
    then publish the accepted events. Returns once they are committed and published."""
    if not changes:
        return []
    result = await _group(engine, redis).submit(changes)
    if isinstance(result, Exception):
        raise result
    return result


async def apply_one(engine: AsyncEngine, redis: Redis, change: Change) -> Outcome:
    (outcome,) = await apply(engine, redis, [change])
    return outcome
