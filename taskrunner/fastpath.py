"""The journal's fast path: a group of changes to distinct tasks whose updates have one
shape (the same columns, the same SQL for computed ones) is recorded by one statement:
the lock, the checks, the update and the events in one round trip, atomic as a
statement is.

The decisions `journal.record` takes in Python are made here in SQL with the same inputs:
the statuses each change may start from (from states.py), expect_attempt/expect_worker,
and the xid check, which writes nothing at all when it fails (the caller then records
the group in a transaction). Several changes to one task, or mixed shapes, go through
`journal.record`."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine

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
    takes_parameter,
)
from taskrunner.connections import connection
from taskrunner.events import Event, EventKind
from taskrunner.groupcommit import Refused
from taskrunner.models import task_table
from taskrunner.states import (
    TaskStatus,
    accepts_artifacts,
    accepts_events,
    accepts_step_ready,
    attempt_runs,
    can_move,
)

NEXT = "+1"  # NEXT_ATTEMPT in a shape
SETTLES_LIST = ", ".join(f"'{s.value}'" for s in sorted(SETTLES))


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
            if kind is EventKind.WORKFLOW:
                return True
            if kind is EventKind.STEP_READY:
                return accepts_step_ready(s)
            if kind in (EventKind.ARTIFACT, EventKind.SCHEDULE):
                return accepts_artifacts(s)
            return accepts_events(s)
        return can_move(s, to, retry_request=retry_request, only_from=only_from)

    return ",".join(s.value for s in TaskStatus if allowed(s))


@functools.cache
def _column_type(column: str) -> str:
    dialect: Any = postgresql.dialect
    return str(task_table.c[column].type.compile(dialect=dialect()))


@functools.cache
def _statement(
    shape: Shape, full: bool, slots: bool = False, steps_too: bool = False
) -> tuple[str, tuple[str, ...]]:
    """The statement for changes of `shape`, and the columns whose values (or Sql params)
    are its parameters after the first seven (one array each; with `slots`, the last
    parameter is the ids of the starts that take a concurrency slot).

    With `slots`, `taskrunner_take_slots` runs first (an InitPlan of `locked`, evaluated
    before its first row is locked): the tasks it holds back are left out of the group, and
    every row of the result carries their ids (`held_ids`; the result has one row even when
    every task was held back).

    Without `steps_too`, the moves of workflow steps their workflow settles (dag.SETTLES)
    are left out: the caller records them in a transaction that settles them."""
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
            if takes_parameter(text):
                takes.append(column)
                arrays.append(param_type or _column_type(column))
                names.append(f"v_{column}")
            sets.append(assignment(column, text, f"ok.v_{column}"))
    unnest = ", ".join(f"${i}::{a}[]" for i, a in enumerate(arrays, start=1))
    held, not_held, held_from = "", "", "FROM locked l LEFT JOIN ev ON ev.task_id = l.id"
    held_ids = ""
    if slots:
        slot_ids = f"${len(arrays) + 1}::uuid[]"
        held = f"held AS MATERIALIZED (SELECT taskrunner_take_slots({slot_ids}) AS ids),\n"
        not_held = " AND t.id <> ALL(coalesce((SELECT ids FROM held), '{}'))"
        held_from = "FROM held h LEFT JOIN (locked l LEFT JOIN ev ON ev.task_id = l.id) ON true"
        held_ids = ", h.ids AS held_ids"
    settled_elsewhere = (
        ""
        if steps_too
        else "AND NOT (l.workflow_id IS NOT NULL "
        f"AND coalesce(c.to_status, '') IN ({SETTLES_LIST}))"
    )
    extra = f", {ROW_COLUMNS}" if full else ""
    locked = ", ".join(f"t.{c}" for c in LOCKED_COLUMNS.split(", "))
    statement = f"""
WITH {held}c AS (SELECT * FROM unnest({unnest}) AS c({", ".join(names)})),
locked AS (
  SELECT {locked}, {CURRENT_XID} AS xid{extra}
  FROM task t WHERE t.id = ANY($1::uuid[]){not_held} ORDER BY t.id FOR UPDATE
),
ok AS (
  SELECT c.*, l.owner FROM locked l JOIN c ON c.id = l.id
  WHERE l.status = ANY(string_to_array(c.allowed, ','))
    AND (c.expect_attempt IS NULL OR l.attempts = c.expect_attempt)
    AND (c.expect_worker IS NULL OR l.worker_id = c.expect_worker)
    AND NOT (coalesce(c.to_status, '') = 'RUNNING'
             AND (l.waiting IS NOT DISTINCT FROM '{WAITING_PARENTS}' OR coalesce(l.{LATE}, false)))
    AND NOT (c.kind = '{EventKind.STEP_READY.value}'
             AND l.waiting IS DISTINCT FROM '{WAITING_PARENTS}')
    {settled_elsewhere}
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
SELECT l.*, ev.id AS e_id, ev.seq AS e_seq, ev.xid AS e_xid, ev.at AS e_at,
       ev.data AS e_data{held_ids}
{held_from}"""
    return statement, tuple(takes)


ONLY_IN_TRANSACTIONS = frozenset({EventKind.STEP_READY, EventKind.WORKFLOW})


def one_shape(changes: Sequence[Change]) -> Shape | None:
    """The shape of `changes` when one statement can record them (see above). A workflow's
    own changes (dag.settle) are made in transactions only."""
    if any(c.kind in ONLY_IN_TRANSACTIONS for c in changes):
        return None
    shape = shape_of(changes[0])
    ids = {change.task_id for change in changes}
    if len(ids) < len(changes) or any(shape_of(c) != shape for c in changes[1:]):
        return None
    return shape


def _args(changes: Sequence[Change], takes: Sequence[str], limited: list[Any]) -> list[Any]:
    """The statement's parameters for `changes` (Refused: a value that cannot be encoded)."""
    try:
        args: list[Any] = [
            [c.task_id for c in changes],
            [allowed_from(c) for c in changes],
            [c.expect_attempt for c in changes],
            [c.expect_worker for c in changes],
            [c.kind.value for c in changes],
            [json_text(dict(c.data)) for c in changes],
            [c.to.value if c.to else None for c in changes],
            *([param(column, c.values[column]) for c in changes] for column in takes),
        ]
    except Exception as exc:
        raise Refused(str(exc)) from exc
    if limited:
        args.append(limited)
    return args


def _outcome(change: Change, row: Any) -> Outcome:
    """The outcome of a change whose task the statement found (and locked)."""
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
        snapshot = {k: v for k, v in row.items() if not k.startswith("e_") and k != "held_ids"}
    return Outcome(change, TaskStatus(row["status"]), event, snapshot)


async def record_group(
    engine: AsyncEngine, changes: Sequence[Change], shape: Shape
) -> list[Outcome | None] | None:
    """Record `changes` (of one `shape`, distinct tasks) in one statement; None when it kept
    meeting xid inversions (the caller then runs a transaction, which retries longer).

    The end of a workflow step is not recorded here (its outcome is None): it is settled
    in the transaction that records it (journal.record, dag.settle)."""
    full = any(c.want_row for c in changes)
    limited = [c.task_id for c in changes if c.take_slot]
    statement, takes = _statement(shape, full, bool(limited))
    args = _args(changes, takes, limited)
    for _ in range(3):
        try:
            async with connection(engine) as conn:
                found = await conn.fetch(statement, *args)
        except (asyncpg.PostgresError, ValueError) as exc:  # refused: nothing was written
            raise Refused(str(exc)) from exc
        rows = {r["id"]: r for r in found if r["id"] is not None}
        held = set(found[0]["held_ids"] or ()) if limited and found else set()
        if not any(r["last_xid"] > r["xid"] for r in rows.values()):
            break
    else:
        return None
    outcomes: list[Outcome | None] = []
    for change in changes:
        if change.task_id in held:
            outcomes.append(Outcome(change, TaskStatus.QUEUED, None, held_back=True))
            continue
        row = rows.get(change.task_id)
        if row is None:
            outcomes.append(Outcome(change, None, None))
        elif row["workflow_id"] is not None and change.to in SETTLES and row["e_id"] is None:
            outcomes.append(None)  # a step's end: the caller records it in a transaction
        else:
            outcomes.append(_outcome(change, row))
    return outcomes


async def record_on(
    conn: asyncpg.Connection, changes: Sequence[Change]
) -> tuple[list[Outcome], dict[uuid.UUID, uuid.UUID]]:
    """In the caller's transaction: `changes` (distinct tasks, of any shapes, none taking
    a concurrency slot) recorded by one statement per shape, the moves of workflow steps
    included; also the workflow of each accepted change's task that is a step (the caller
    settles them). XidInversion when a task was written by a newer transaction (that
    statement wrote nothing; the caller runs the transaction again)."""
    groups: dict[Shape, list[int]] = {}
    for i, change in enumerate(changes):
        groups.setdefault(shape_of(change), []).append(i)
    outcomes: list[Outcome | None] = [None] * len(changes)
    steps: dict[uuid.UUID, uuid.UUID] = {}
    for shape, indexes in groups.items():
        part = [changes[i] for i in indexes]
        statement, takes = _statement(shape, any(c.want_row for c in part), False, True)
        found = await conn.fetch(statement, *_args(part, takes, []))
        rows = {r["id"]: r for r in found if r["id"] is not None}
        if any(r["last_xid"] > r["xid"] for r in rows.values()):
            raise XidInversion(str(next(iter(rows))))
        for i, change in zip(indexes, part, strict=True):
            row = rows.get(change.task_id)
            outcomes[i] = _outcome(change, row) if row else Outcome(change, None, None)
            if row is not None and row["e_id"] is not None and row["workflow_id"] is not None:
                steps[change.task_id] = row["workflow_id"]
    return [o for o in outcomes if o is not None], steps
