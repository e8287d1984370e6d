"""Concurrency slots in the journal: a group of starts with a key is checked by
`taskrunner_take_slots` in the statement that records it (the one-statement path) or first
in its transaction (the other path); starts over the limit are held back, write nothing
else, and leave the task QUEUED with `waiting = 'concurrency'`; `concurrency.release`
hands a freed slot to the oldest held-back task."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from arq import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import actors, concurrency, connections, journal, transitions
from taskrunner.states import TaskStatus
from taskrunner.submissions import Submission, insert

T = actors.key("tester", "tester")  # the actor of the changes these tests make


async def keyed_tasks(engine: AsyncEngine, n: int, key: str, limit: int) -> list[uuid.UUID]:
    subs = [
        Submission("echo", {"message": str(i)}, 60, concurrency_key=key, concurrency_limit=limit)
        for i in range(n)
    ]
    async with connections.transaction(engine) as conn:
        (tasks,), _ = await insert(conn, [("slots", subs, T)])
    return [t.id for t in tasks]


async def rows(
    engine: AsyncEngine, ids: list[uuid.UUID]
) -> dict[uuid.UUID, tuple[str, str | None]]:
    async with engine.connect() as conn:
        found = await conn.execute(
            sa.text("SELECT id, status, waiting FROM task WHERE id = ANY(:ids)"), {"ids": ids}
        )
        return {r.id: (r.status, r.waiting) for r in found}


@pytest.mark.parametrize("path", ["one statement", "transaction"])
async def test_starts_over_the_limit_are_held_back(
    engine: AsyncEngine, pool: ArqRedis, path: str
) -> None:
    key = f"k-{uuid.uuid4().hex[:6]}"
    ids = await keyed_tasks(engine, 3, key, 2)
    starts = [transitions.started(i, "w1", limited=True) for i in ids]
    if path == "one statement":
        outcomes = await journal.apply(engine, pool, starts)
    else:  # a log line of another task makes the group's shapes differ: the other path
        other = (await keyed_tasks(engine, 1, f"other-{key}", 1))[0]
        extra = transitions.cancelled_while_queued(other)
        outcomes = (await journal.apply(engine, pool, [*starts, extra]))[:3]
    assert [o.accepted for o in outcomes].count(True) == 2
    held = [o for o in outcomes if o.held_back]
    assert len(held) == 1 and held[0].event is None and held[0].found is TaskStatus.QUEUED
    state = await rows(engine, ids)
    assert sorted(state.values()) == [
        ("QUEUED", "concurrency"),
        ("RUNNING", None),
        ("RUNNING", None),
    ]
    # a start of the held-back task while both still run is held back again
    (again,) = await journal.apply(
        engine, pool, [transitions.started(held[0].change.task_id, "w2", limited=True)]
    )
    assert again.held_back
    # one ends: its release starts the held-back one (enqueued, no longer waiting)
    running = next(o.change.task_id for o in outcomes if o.accepted)
    (ended,) = await journal.apply(engine, pool, [transitions.succeeded(running, 1, None)])
    assert ended.accepted
    assert await concurrency.release(engine, pool, [("slots", key)]) == 1
    assert (await rows(engine, [held[0].change.task_id]))[held[0].change.task_id] == (
        "QUEUED",
        None,
    )
    assert await pool.zscore(pool.default_queue_name, str(held[0].change.task_id)) is not None
    # nothing more to release while the limit is reached again
    assert await concurrency.release(engine, pool, [("slots", key)]) == 0


async def test_a_start_without_a_key_ignores_slots(engine: AsyncEngine, pool: ArqRedis) -> None:
    async with connections.transaction(engine) as conn:
        (tasks,), _ = await insert(conn, [("slots", [Submission("echo", {"message": "x"}, 60)], T)])
    (outcome,) = await journal.apply(
        engine, pool, [transitions.started(tasks[0].id, "w1", limited=True)]
    )
    assert outcome.accepted and not outcome.held_back
