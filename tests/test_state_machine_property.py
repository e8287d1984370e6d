"""Property: whatever sequence of transitions is attempted, in whatever concurrent mix, a
task's history stays valid: seq gap-free, every move allowed by the table, a terminal
state left only by an explicit retry, and the row agreeing with its last event."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
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


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(plan=rounds)
async def test_any_mix_of_transitions_keeps_the_history_valid(
    engine: AsyncEngine, plan: list[list[tuple[TaskStatus | str, bool]]]
) -> None:
    async with journal.transaction(engine) as conn:
        (task,), _ = await _insert(conn, "", [Submission("echo", {"message": "p"}, 60)])

    async def attempt(target: TaskStatus | str, retry: bool) -> None:
        async def work(conn: asyncpg.Connection) -> list[journal.Outcome]:
            return await journal.record(conn, [_change(task.id, target, retry)])

        await journal.run_transaction(engine, work)

    for concurrent in plan:  # each round's attempts race each other
        await asyncio.gather(*(attempt(t, r) for t, r in concurrent))

    events, row_status = await _history(engine, task.id)
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
