"""The write path against a real PostgreSQL: conditional transitions, gap-free seqs under
concurrency, and per-task transaction order ((xid, id) order, even when an older
transaction waits behind a newer one)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import connections, fastpath, journal
from taskrunner.changes import NEXT_ATTEMPT, NOW, Change, Outcome, seconds_from_now
from taskrunner.config import Settings
from taskrunner.events import EventKind
from taskrunner.states import TaskStatus
from tests.support.rows import new_task


@pytest.fixture
async def redis(settings: Settings) -> Redis:
    client = Redis.from_url(settings.require_redis_url())
    yield client  # type: ignore[misc]
    await client.aclose()


def _log(task_id: uuid.UUID, n: int) -> Change:
    return Change(task_id, EventKind.LOG, {"level": "info", "line": str(n)})


def _to(task_id: uuid.UUID, status: TaskStatus, **options: Any) -> Change:
    """A status change; `options` are further fields of the Change (values, want_row ...)."""
    return Change(task_id, EventKind.STATUS, {"status": status.value}, to=status, **options)


async def _seqs(engine: AsyncEngine, task_id: uuid.UUID) -> list[tuple[int, int, int]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text("SELECT seq, xid, id FROM task_event WHERE task_id = :t ORDER BY seq"),
            {"t": task_id},
        )
        return [(r.seq, r.xid, r.id) for r in rows]


async def test_a_refused_transition_writes_nothing(engine: AsyncEngine, redis: Redis) -> None:
    task_id = await new_task(engine)
    outcome = await journal.apply_one(engine, redis, _to(task_id, TaskStatus.SUCCEEDED))
    assert not outcome.accepted and outcome.found is TaskStatus.QUEUED
    assert [s for s, _, _ in await _seqs(engine, task_id)] == [1]


async def test_unknown_task_is_reported_not_found(engine: AsyncEngine, redis: Redis) -> None:
    outcome = await journal.apply_one(engine, redis, _to(uuid.uuid4(), TaskStatus.RUNNING))
    assert not outcome.accepted and outcome.found is None


async def test_concurrent_writers_get_gap_free_seqs_in_xid_and_id_order(
    engine: AsyncEngine, redis: Redis
) -> None:
    task_id = await new_task(engine)
    await journal.apply_one(engine, redis, _to(task_id, TaskStatus.RUNNING))
    await asyncio.gather(*(journal.apply_one(engine, redis, _log(task_id, n)) for n in range(40)))
    rows = await _seqs(engine, task_id)
    assert [s for s, _, _ in rows] == list(range(1, 43))
    xids = [x for _, x, _ in rows]
    ids = [i for _, _, i in rows]
    assert xids == sorted(xids) and ids == sorted(ids)


async def test_older_transaction_behind_a_newer_writer_is_rerun_with_a_fresh_xid(
    engine: AsyncEngine, redis: Redis
) -> None:
    """T1 takes its xid first, then waits for the row T2 (a newer xid) holds. Recording
    T1's event with its old xid would put it before T2's in (xid, id) order: the journal
    must roll T1 back and run it again."""
    task_id = await new_task(engine)
    await journal.apply_one(engine, redis, _to(task_id, TaskStatus.RUNNING))
    runs = 0
    t1_has_xid = asyncio.Event()
    t2_locked = asyncio.Event()

    async def t1(conn: asyncpg.Connection) -> list[Outcome]:
        nonlocal runs
        runs += 1
        await conn.execute("SELECT pg_current_xact_id()")
        if runs == 1:
            t1_has_xid.set()
            await t2_locked.wait()
        return await journal.record(conn, [_log(task_id, 1)])

    async def t2() -> None:
        await t1_has_xid.wait()
        async with connections.transaction(engine) as conn:
            await journal.record(conn, [_log(task_id, 2)])
            t2_locked.set()
            await asyncio.sleep(0.2)  # T1 now queues for the row lock

    await asyncio.gather(journal.run_transaction(engine, t1), t2())
    assert runs == 2
    rows = await _seqs(engine, task_id)
    assert [s for s, _, _ in rows] == [1, 2, 3, 4]
    xids = [x for _, x, _ in rows]
    assert xids == sorted(xids)


async def test_a_write_for_a_replaced_attempt_is_refused(engine: AsyncEngine, redis: Redis) -> None:
    task_id = await new_task(engine)
    start = _to(task_id, TaskStatus.RUNNING, values={"attempts": 2, "worker_id": "w-new"})
    assert (await journal.apply_one(engine, redis, start)).accepted
    stale = Change(
        task_id,
        EventKind.STATUS,
        {"status": "SUCCEEDED"},
        to=TaskStatus.SUCCEEDED,
        expect_attempt=1,  # the attempt a lost worker was running
    )
    assert not (await journal.apply_one(engine, redis, stale)).accepted
    wrong_worker = Change(
        task_id, EventKind.LOG, {"level": "info", "line": "x"}, expect_worker="w-old"
    )
    assert not (await journal.apply_one(engine, redis, wrong_worker)).accepted
    current = _to(task_id, TaskStatus.SUCCEEDED, expect_attempt=2, expect_worker="w-new")
    assert (await journal.apply_one(engine, redis, current)).accepted


async def test_concurrent_writers_share_transactions_and_keep_every_rule(
    engine: AsyncEngine, redis: Redis
) -> None:
    """Group commit: 60 writers at once take fewer transactions than writers, each gets its
    own outcome, and every task's events are still 1, 2, 3 ... in transaction order."""
    tasks = [await new_task(engine) for _ in range(20)]
    for task_id in tasks:
        await journal.apply_one(engine, redis, _to(task_id, TaskStatus.RUNNING))
    xids_before = await _xid(engine)

    async def writer(task_id: uuid.UUID, n: int) -> Outcome:
        return await journal.apply_one(engine, redis, _log(task_id, n))

    outcomes = await asyncio.gather(
        *(writer(task_id, n) for n in range(3) for task_id in tasks),
        *(journal.apply_one(engine, redis, _to(uuid.uuid4(), TaskStatus.RUNNING)),),
    )
    transactions = await _xid(engine) - xids_before
    assert all(o.accepted for o in outcomes[:-1]) and not outcomes[-1].accepted
    assert outcomes[-1].found is None  # an unknown task in the group is refused alone
    assert transactions < 60, transactions
    for task_id in tasks:
        seqs = await _seqs(engine, task_id)
        assert [s for s, _, _ in seqs] == [1, 2, 3, 4, 5]
        assert sorted(seqs, key=lambda r: (r[1], r[2])) == seqs
    lines = {(o.change.task_id, o.event.data["line"]) for o in outcomes[:-1] if o.event}
    assert len(lines) == 60  # each writer got its own event back


async def test_a_failing_writer_fails_alone(engine: AsyncEngine, redis: Redis) -> None:
    """A unit PostgreSQL refuses (here: a progress value it cannot store) fails its own
    writer only; the writers grouped with it commit."""
    good, bad = await new_task(engine), await new_task(engine)
    await journal.apply_one(engine, redis, _to(good, TaskStatus.RUNNING))
    await journal.apply_one(engine, redis, _to(bad, TaskStatus.RUNNING))
    broken = Change(bad, EventKind.PROGRESS, {"progress": 0.5}, values={"progress": "x"})
    results = await asyncio.gather(
        *(journal.apply_one(engine, redis, _log(good, n)) for n in range(5)),
        journal.apply_one(engine, redis, broken),
        return_exceptions=True,
    )
    assert all(isinstance(r, Outcome) and r.accepted for r in results[:5]), results
    assert isinstance(results[5], Exception)
    assert [s for s, _, _ in await _seqs(engine, good)] == [1, 2, 3, 4, 5, 6, 7]
    assert [s for s, _, _ in await _seqs(engine, bad)] == [1, 2]


async def _xid(engine: AsyncEngine) -> int:
    """The next transaction id PostgreSQL will hand out (counts write transactions)."""
    async with engine.connect() as conn:
        value = await conn.scalar(
            sa.text("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
        )
    return int(value or 0)


async def test_a_row_returned_to_a_change_includes_the_earlier_changes_of_its_group(
    engine: AsyncEngine, redis: Redis
) -> None:
    """A retry and the start of the new attempt in one transaction: the start sees the row
    as the retry left it (not cancel_requested), not as it was locked."""
    task_id = await new_task(engine)
    cancel = _to(task_id, TaskStatus.CANCELLED, values={"cancel_requested": True})
    await journal.apply_one(engine, redis, cancel)
    retry = _to(task_id, TaskStatus.QUEUED, retry_request=True, values={"cancel_requested": False})
    start = _to(task_id, TaskStatus.RUNNING, values={"attempts": NEXT_ATTEMPT}, want_row=True)
    async with connections.transaction(engine) as conn:
        outcomes = await journal.record(conn, [retry, start])
    assert all(o.accepted for o in outcomes)
    row = outcomes[1].row
    assert row is not None
    assert row["cancel_requested"] is False and row["status"] == "QUEUED"
    assert row["attempts"] == 0 and row["event_seq"] == 3


def _start(task_id: uuid.UUID) -> Change:
    values = {"attempts": NEXT_ATTEMPT, "started_at": NOW, "worker_id": "w"}
    return _to(task_id, TaskStatus.RUNNING, values=values, want_row=True)


async def test_one_statement_writes_nothing_when_a_task_was_written_by_a_newer_transaction(
    engine: AsyncEngine, redis: Redis
) -> None:
    """Changes to distinct tasks with one shape are recorded by one statement, which takes
    the xid check for the whole group: a task whose last writer looks newer than any
    transaction (poisoned here) stops every change of it; after three tries the group goes
    to a transaction, which refuses as well."""
    poisoned, other = await new_task(engine), await new_task(engine)
    async with engine.begin() as conn:
        await conn.execute(
            sa.text("UPDATE task SET last_xid = 9223372036854775807 WHERE id = :t"),
            {"t": poisoned},
        )
    changes = [_start(poisoned), _start(other)]
    assert fastpath.one_shape(changes) is not None  # the one-statement path is taken
    with pytest.raises(journal.XidInversion):
        await journal.apply(engine, redis, changes)
    assert [s for s, _, _ in await _seqs(engine, other)] == [1]
    assert [s for s, _, _ in await _seqs(engine, poisoned)] == [1]


async def test_both_ways_of_recording_return_the_same_row_to_a_start(
    engine: AsyncEngine, redis: Redis
) -> None:
    a, b = await new_task(engine), await new_task(engine)
    outcomes = await fastpath.record_group(engine, [_start(a)], fastpath.shape_of(_start(a)))
    assert outcomes is not None
    async with connections.transaction(engine) as conn:
        (in_transaction,) = await journal.record(conn, [_start(b)])
    in_statement = outcomes[0].row
    assert in_statement is not None and in_transaction.row is not None
    assert in_statement.keys() == in_transaction.row.keys()
    same = {
        k for k in in_statement if k not in ("id", "xid", "last_xid", "created_at", "locked_at")
    }
    assert {k: in_statement[k] for k in same} == {k: in_transaction.row[k] for k in same}
    assert in_statement["status"] == "QUEUED" and in_statement["attempts"] == 0


async def test_a_computed_value_with_a_parameter_is_written_both_ways(
    engine: AsyncEngine, redis: Redis
) -> None:
    """`Sql` with a parameter (a retry's due time) in one statement and in a transaction."""
    a, b = await new_task(engine), await new_task(engine)
    for task_id in (a, b):
        assert (await journal.apply_one(engine, redis, _start(task_id))).accepted

    def later(task_id: uuid.UUID) -> Change:
        values = {"due_at": seconds_from_now(3600), "worker_id": None}
        return _to(task_id, TaskStatus.QUEUED, values=values)

    outcomes = await fastpath.record_group(engine, [later(a)], fastpath.shape_of(later(a)))
    assert outcomes is not None and outcomes[0].accepted
    async with connections.transaction(engine) as conn:
        (outcome,) = await journal.record(conn, [later(b)])
    assert outcome.accepted
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text(
                "SELECT extract(epoch FROM due_at - clock_timestamp()) AS wait, worker_id, "
                "status FROM task WHERE id = ANY(:ids)"
            ),
            {"ids": [a, b]},
        )
        found = rows.all()
    assert len(found) == 2
    assert all(3590 < r.wait <= 3600 and r.worker_id is None for r in found), found
    assert {r.status for r in found} == {"QUEUED"}


async def _in_one_statement(engine: AsyncEngine, change: Change) -> Outcome:
    outcomes = await fastpath.record_group(engine, [change], fastpath.shape_of(change))
    assert outcomes is not None
    return outcomes[0]


async def _in_a_transaction(engine: AsyncEngine, change: Change) -> Outcome:
    async with connections.transaction(engine) as conn:
        (outcome,) = await journal.record(conn, [change])
    return outcome


WAYS = {"statement": _in_one_statement, "transaction": _in_a_transaction}


@pytest.mark.parametrize("way", WAYS)
async def test_a_retry_request_never_requeues_a_running_task(
    engine: AsyncEngine, redis: Redis, way: str
) -> None:
    """RUNNING -> QUEUED is a worker's move (a retry later, a hand-back); retryTask's change
    taking it would run a second body beside the first."""
    task_id = await new_task(engine)
    assert (await journal.apply_one(engine, redis, _start(task_id))).accepted
    retry = _to(task_id, TaskStatus.QUEUED, retry_request=True, values={"worker_id": None})
    outcome = await WAYS[way](engine, retry)
    assert not outcome.accepted and outcome.found is TaskStatus.RUNNING


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("kind", ["cancelled", "artifact"])
async def test_a_late_write_of_an_attempt_never_lands_on_the_requeued_task(
    engine: AsyncEngine, redis: Redis, way: str, kind: str
) -> None:
    """Attempt 1 was recovered (RUNNING -> QUEUED, the attempt number unchanged) while its
    worker still ran it. That worker's late outcome (CANCELLED: QUEUED -> CANCELLED is a
    move of the table) or task.log must not be recorded on the waiting task."""
    task_id = await new_task(engine)
    assert (await journal.apply_one(engine, redis, _start(task_id))).accepted
    recovered = _to(task_id, TaskStatus.QUEUED, values={"worker_id": None}, expect_attempt=1)
    assert (await journal.apply_one(engine, redis, recovered)).accepted
    late = (
        _to(task_id, TaskStatus.CANCELLED, values={"finished_at": NOW}, expect_attempt=1)
        if kind == "cancelled"
        else Change(task_id, EventKind.ARTIFACT, {"name": "task.log"}, expect_attempt=1)
    )
    outcome = await WAYS[way](engine, late)
    assert not outcome.accepted and outcome.found is TaskStatus.QUEUED
    assert [s for s, _, _ in await _seqs(engine, task_id)] == [1, 2, 3]
