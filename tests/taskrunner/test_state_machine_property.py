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

from taskrunner import fastpath, journal
from taskrunner.changes import Change, Outcome
from taskrunner.events import EventKind
from taskrunner.states import (
    NARROW,
    TERMINAL,
    TaskStatus,
    accepts_artifacts,
    accepts_events,
    attempt_runs,
    can_move,
)
from tests.support.rows import new_task

# An attempt: a status to move to (with or without an explicit retry, as a narrow move or
# not), or a log line, or an artifact; each may be bound to the task's attempt (0: the
# tasks here never start one), as a worker's writes are.
Attempt = tuple[TaskStatus | str, bool, bool, bool]  # target, retry, narrow, bound
attempts = st.one_of(
    st.tuples(st.sampled_from(list(TaskStatus)), st.booleans(), st.booleans(), st.booleans()),
    st.tuples(st.sampled_from(["log", "artifact"]), st.just(False), st.just(False), st.booleans()),
)
rounds = st.lists(st.lists(attempts, min_size=1, max_size=4), min_size=1, max_size=8)


def _narrow(target: TaskStatus | str, narrow: bool) -> TaskStatus | None:
    """The `only_from` of a narrow move to `target`, if asked for and there is one."""
    return next((s for s, t in NARROW if t == target), None) if narrow else None


def _change(task_id: uuid.UUID, attempt: Attempt) -> Change:
    target, retry, narrow, bound = attempt
    expect = 0 if bound else None
    if target in ("log", "artifact"):
        kind = EventKind.LOG if target == "log" else EventKind.ARTIFACT
        return Change(task_id, kind, {"bound": bound}, expect_attempt=expect)
    status = TaskStatus(target)
    only_from = _narrow(status, narrow)
    return Change(
        task_id,
        EventKind.STATUS,
        {"status": status.value, "retry": retry, "only_from": only_from, "bound": bound},
        to=status,
        retry_request=retry,
        only_from=only_from,
        expect_attempt=expect,
    )


def _allowed(current: TaskStatus, attempt: Attempt) -> bool:
    """What the state table says of `attempt` on a task in `current`."""
    target, retry, narrow, bound = attempt
    if bound and not attempt_runs(current):
        return False
    if target == "log":
        return accepts_events(current)
    if target == "artifact":
        return accepts_artifacts(current)
    status = TaskStatus(target)
    return can_move(current, status, retry_request=retry, only_from=_narrow(status, narrow))


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


async def _in_a_transaction(engine: AsyncEngine, change: Change) -> Outcome:
    async def work(conn: asyncpg.Connection) -> list[Outcome]:
        return await journal.record(conn, [change])

    (outcome,) = await journal.run_transaction(engine, work)
    return outcome


async def _in_one_statement(engine: AsyncEngine, change: Change) -> Outcome:
    outcomes = await fastpath.record_group(engine, [change], fastpath.shape_of(change))
    if outcomes is None:  # xid inversions three times in a row: apply() runs a transaction
        return await _in_a_transaction(engine, change)
    return outcomes[0]


PATHS = {"transaction": _in_a_transaction, "statement": _in_one_statement}


@pytest.mark.parametrize("path", PATHS)
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(plan=rounds)
async def test_any_mix_of_transitions_keeps_the_history_valid(
    engine: AsyncEngine, path: str, plan: list[list[Attempt]]
) -> None:
    task_id = await new_task(engine)
    for concurrent in plan:  # each round's attempts race each other
        await asyncio.gather(*(PATHS[path](engine, _change(task_id, a)) for a in concurrent))

    events, row_status = await _history(engine, task_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.xid for e in events] == sorted(e.xid for e in events)
    current = TaskStatus.QUEUED
    assert events[0].data["status"] == "QUEUED"
    for event in events[1:]:
        bound = bool(event.data.get("bound"))
        if event.kind in ("log", "artifact"):
            assert _allowed(current, (event.kind, False, False, bound))
            continue
        target = TaskStatus(event.data["status"])
        retry = bool(event.data.get("retry"))
        narrow = event.data.get("only_from") is not None
        assert _allowed(current, (target, retry, narrow, bound))
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
    engine: AsyncEngine, path: str, plan: list[Attempt]
) -> None:
    """One at a time: every change is accepted exactly when the table allows it, and
    reports the status it found and the event it wrote."""
    task_id = await new_task(engine)
    current, seq = TaskStatus.QUEUED, 1
    for attempt in plan:
        target = attempt[0]
        outcome = await PATHS[path](engine, _change(task_id, attempt))
        assert outcome.found is current
        assert outcome.accepted is _allowed(current, attempt), (current, attempt)
        if outcome.event is not None:
            seq += 1
            assert (outcome.event.task_id, outcome.event.seq) == (task_id, seq)
            event_kind = target if target in ("log", "artifact") else "status"
            assert outcome.event.kind == event_kind
            current = current if event_kind != "status" else TaskStatus(target)
    events, row_status = await _history(engine, task_id)
    assert len(events) == seq and row_status == current.value
