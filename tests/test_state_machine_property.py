"""Property: whatever sequence of transitions is attempted, in whatever concurrent mix, a
task's history stays valid: seq gap-free, every move allowed by the table, a terminal
state left only by an explicit retry, and the row agreeing with its last event. Both ways
the journal records changes are held to it: a transaction (`record`) and one statement
(for groups of distinct tasks), which decides the same things in SQL."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import journal
from taskrunner.events import EventKind
from taskrunner.states import TERMINAL, TaskStatus, accepts_events, can_move
from taskrunner.tasks import Submission, _insert

# An attempt: a status to move to (with or without an explicit retry), or a log line.
attempts = st.one_of(
    st.tuples(st.sampled_from(list(TaskStatus)), st.booleans()),
    st.just(("log", False)),
)
rounds = st.lists(st.lists(attempts, min_size=1, max_size=4), min_size=1, max_size=8)


def _change(task_id: uuid.UUID, target: TaskStatus | str, retry: bool) -> journal.Change:
    if target == "log":
        return journal.Change(task_id, EventKind.LOG, {"level": "info", "line": "x"})
    status = TaskStatus(target)
    return journal.Change(
        task_id,
        EventKind.STATUS,
        {"status": status.value, "retry": retry},
        to=status,
        retry_request=retry,
    )


async def _history(engine: AsyncEngine, task_id: uuid.UUID) -> tuple[list[sa.Row], str]:  # type: ignore[type-arg]
    async with engine.connect() as conn:
        events = (
            await conn.execute(
                sa.text(
                    "SELECT seq, xid, kind, data FROM task_event WHERE task_id = :t ORDER BY seq"
                ),
                {"t": task_id},
            )
        ).all()
        status = await conn.scalar(sa.text("SELECT status FROM task WHERE id = :t"), {"t": task_id})
    return list(events), str(status)


async def _in_a_transaction(engine: AsyncEngine, change: journal.Change) -> journal.Outcome:
    async def work(conn: asyncpg.Connection) -> list[journal.Outcome]:
        return await journal.record(conn, [change])

    (outcome,) = await journal.run_transaction(engine, work)
    return outcome


async def _in_one_statement(engine: AsyncEngine, change: journal.Change) -> journal.Outcome:
    outcomes = await journal._record_in_one_statement(engine, [change], journal._shape(change))
    if outcomes is None:  # xid inversions three times in a row: apply() runs a transaction
        return await _in_a_transaction(engine, change)
    return outcomes[0]


PATHS = {"transaction": _in_a_transaction, "statement": _in_one_statement}


async def _new_task(engine: AsyncEngine) -> uuid.UUID:
    async with journal.transaction(engine) as conn:
        (task,), _ = await _insert(conn, "", [Submission("echo", {"message": "p"}, 60)])
    return task.id


@pytest.mark.parametrize("path", PATHS)
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(plan=rounds)
async def test_any_mix_of_transitions_keeps_the_history_valid(
    engine: AsyncEngine, path: str, plan: list[list[tuple[TaskStatus | str, bool]]]
) -> None:
    task_id = await _new_task(engine)
    for concurrent in plan:  # each round's attempts race each other
        await asyncio.gather(*(PATHS[path](engine, _change(task_id, t, r)) for t, r in concurrent))

    events, row_status = await _history(engine, task_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.xid for e in events] == sorted(e.xid for e in events)
    current = TaskStatus.QUEUED
    assert events[0].data["status"] == "QUEUED"
    for event in events[1:]:
        if event.kind == "log":
            assert accepts_events(current)
            continue
        target = TaskStatus(event.data["status"])
        retry = bool(event.data.get("retry"))
        assert can_move(current, target, retry_request=retry)
        if current in TERMINAL:
            assert retry and target is TaskStatus.QUEUED
        current = target
    assert row_status == current.value


@pytest.mark.parametrize("path", PATHS)
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(plan=st.lists(attempts, min_size=1, max_size=10))
async def test_each_change_is_decided_as_the_state_table_says(
    engine: AsyncEngine, path: str, plan: list[tuple[TaskStatus | str, bool]]
) -> None:
    """One at a time: every change is accepted exactly when the table allows it, and
    reports the status it found and the event it wrote."""
    task_id = await _new_task(engine)
    current, seq = TaskStatus.QUEUED, 1
    for target, retry in plan:
        outcome = await PATHS[path](engine, _change(task_id, target, retry))
        assert outcome.found is current
        if target == "log":
            allowed = accepts_events(current)
        else:
            allowed = can_move(current, TaskStatus(target), retry_request=retry)
        assert outcome.accepted is allowed, (current, target, retry)
        if outcome.event is not None:
            seq += 1
            assert (outcome.event.task_id, outcome.event.seq) == (task_id, seq)
            assert outcome.event.kind == ("log" if target == "log" else "status")
            current = current if target == "log" else TaskStatus(target)
    events, row_status = await _history(engine, task_id)
    assert len(events) == seq and row_status == current.value
