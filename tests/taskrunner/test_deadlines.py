"""options.deadline in the domain: a start past the deadline is refused on both of the
journal's paths (one statement, a transaction) and `fail_if_late` then fails the task; the
sweep (`deadlines.expire`) fails every QUEUED task past its deadline, wherever it waits, and
nothing else."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from arq import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import actors, connections, deadlines, journal, transitions
from taskrunner.submissions import Submission, insert

T = actors.key("tester", "tester")  # the actor of the changes these tests make


async def task_with(engine: AsyncEngine, deadline: datetime | None, **fields: object) -> uuid.UUID:
    submission = Submission("echo", {"message": "x"}, 60, deadline=deadline, **fields)  # type: ignore[arg-type]
    async with connections.transaction(engine) as conn:
        ((task,),), _ = await insert(conn, [("owner", [submission], T)])
    return task.id


async def state(engine: AsyncEngine, task_id: uuid.UUID) -> tuple[str, str | None, int, bool]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                sa.text(
                    "SELECT status, error_code, attempts, started_at IS NULL AS never "
                    "FROM task WHERE id = :id"
                ),
                {"id": task_id},
            )
        ).one()
    return row.status, row.error_code, row.attempts, row.never


PAST = datetime.now(UTC) - timedelta(seconds=5)
LATER = datetime.now(UTC) + timedelta(hours=1)


@pytest.mark.parametrize("path", ["one statement", "transaction"])
async def test_a_start_past_the_deadline_is_refused_and_the_task_fails_unrun(
    engine: AsyncEngine, pool: ArqRedis, path: str
) -> None:
    late, timely = await task_with(engine, PAST), await task_with(engine, LATER)
    for task_id, accepted in ((late, False), (timely, True)):
        starts = [transitions.started(task_id, "w")]
        if path == "transaction":  # a change of another shape: the group takes the other path
            starts.append(transitions.cancelled_while_queued(await task_with(engine, None)))
        outcome = (await journal.apply(engine, pool, starts))[0]
        assert outcome.accepted is accepted, task_id
    assert await state(engine, late) == ("QUEUED", None, 0, True)
    assert await deadlines.fail_if_late(engine, pool, late)
    assert await state(engine, late) == ("FAILED", "DEADLINE_EXCEEDED", 0, True)
    assert not await deadlines.fail_if_late(engine, pool, timely)  # running, not late
    assert (await state(engine, timely))[0] == "RUNNING"


async def test_the_sweep_fails_waiting_tasks_past_their_deadline_only(
    engine: AsyncEngine, pool: ArqRedis
) -> None:
    in_queue = await task_with(engine, PAST)
    in_backoff = await task_with(engine, PAST, scheduled_for=LATER)  # waits in PostgreSQL
    not_yet = await task_with(engine, LATER)
    none = await task_with(engine, None)
    running = await task_with(engine, LATER)
    assert (await journal.apply_one(engine, pool, transitions.started(running, "w"))).accepted
    async with engine.begin() as conn:  # its deadline passed while it runs: it runs on
        await conn.execute(
            sa.text("UPDATE task SET deadline = :d WHERE id = :id"), {"d": PAST, "id": running}
        )
    assert await deadlines.expire(engine, pool, pool) == 2
    for task_id in (in_queue, in_backoff):
        assert await state(engine, task_id) == ("FAILED", "DEADLINE_EXCEEDED", 0, True)
    assert (await state(engine, not_yet))[0] == "QUEUED"
    assert (await state(engine, none))[0] == "QUEUED"
    assert (await state(engine, running))[0] == "RUNNING"
    assert await deadlines.expire(engine, pool, pool) == 0  # done once
