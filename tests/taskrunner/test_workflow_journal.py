"""Workflow steps in the journal: a step waiting for its parents never starts (on either
path), a step's end recorded by a group of one shape is settled in a transaction (its child
made ready), two parents ending at once in different transactions make their child ready
exactly once, and retryTask / retryTasks leave steps to retryWorkflow."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import sqlalchemy as sa
from arq import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import actors, control, dag, journal, queue, submissions, transitions, workflows
from taskrunner.changes import Outcome
from taskrunner.config import Settings
from taskrunner.dag import Binding
from taskrunner.db import create_engine
from taskrunner.errors import Conflict
from taskrunner.models import TaskRecord
from taskrunner.queries import TaskCriteria
from taskrunner.submissions import Submission
from taskrunner.workflows import StepSpec, WorkflowSpec

T = actors.key("tester", "tester")  # the actor of the changes these tests make


def step(key: str, *parents: str) -> StepSpec:
    return StepSpec(
        key,
        Submission("sum", {"numbers": [1]}, 60),
        tuple(parents),
        tuple(Binding("numbers", p, "sum", append=True) for p in parents),
    )


async def submit(engine: AsyncEngine, pool: ArqRedis, *steps: StepSpec) -> dict[str, uuid.UUID]:
    """Submit a workflow of `steps` as owner `wj`; its step keys -> task ids."""
    (record,) = await workflows.submit(
        engine=engine, pool=pool, owner="wj", specs=[WorkflowSpec(steps=steps)], actor=T
    )
    found = await workflows.steps(engine=engine, workflow_ids=[record.id])
    return {s.key: s.task.id for s in found[record.id]}


async def plain_task(engine: AsyncEngine, pool: ArqRedis) -> TaskRecord:
    """A task of owner `wj` that is no workflow's step, submitted and enqueued."""
    (task,) = await submissions.submit(
        engine=engine,
        redis=pool,
        pool=pool,
        owner="wj",
        submissions=[Submission("echo", {"message": "x"}, 60)],
        actor=T,
    )
    return task


async def state(engine: AsyncEngine, task_id: uuid.UUID) -> tuple[str, str | None, int]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                sa.text(
                    "SELECT status, waiting, (SELECT count(*) FROM task_event e "
                    "WHERE e.task_id = t.id AND e.kind = 'step_ready') AS ready "
                    "FROM task t WHERE id = :id"
                ),
                {"id": task_id},
            )
        ).one()
    return row.status, row.waiting, row.ready


async def run(engine: AsyncEngine, pool: ArqRedis, task_id: uuid.UUID, result: float) -> None:
    """Start `task_id` and record its success with `{"sum": result}`."""
    start = await journal.apply_one(engine, pool, transitions.started(task_id, "w"))
    assert start.accepted
    end = await journal.apply_one(engine, pool, transitions.succeeded(task_id, 1, {"sum": result}))
    assert end.accepted


@pytest.mark.parametrize("path", ["one statement", "transaction"])
async def test_a_step_waiting_for_its_parents_never_starts(
    engine: AsyncEngine, pool: ArqRedis, path: str
) -> None:
    ids = await submit(engine, pool, step("a"), step("b", "a"))
    starts = [transitions.started(ids["b"], "w")]
    if path == "transaction":  # a change of another shape: the group takes the other path
        other = (await submit(engine, pool, step("x")))["x"]
        starts.append(transitions.cancelled_while_queued(other))
    outcome = (await journal.apply(engine, pool, starts))[0]
    assert not outcome.accepted
    assert await state(engine, ids["b"]) == ("QUEUED", "parents", 0)


# Change.step: the worker's hint that a task is a step (its group is recorded in the
# transaction that settles it); without it, the statement leaves the ends out for one
HINTS = pytest.mark.parametrize("hinted", [False, True], ids=["unhinted", "step hint"])


@HINTS
async def test_an_end_in_a_group_of_one_shape_is_settled_with_its_child_ready(
    engine: AsyncEngine, pool: ArqRedis, hinted: bool
) -> None:
    first = await submit(engine, pool, step("a"), step("b", "a"))
    second = await submit(engine, pool, step("a"), step("b", "a"))
    for ids in (first, second):
        assert (await journal.apply_one(engine, pool, transitions.started(ids["a"], "w"))).accepted
    ends = [
        replace(transitions.succeeded(ids["a"], 1, {"sum": 5}), step=hinted)
        for ids in (first, second)
    ]
    outcomes = await journal.apply(engine, pool, ends)  # one shape
    assert all(o.accepted for o in outcomes)
    for ids in (first, second):
        assert await state(engine, ids["b"]) == ("QUEUED", None, 1)
        async with engine.connect() as conn:
            bound = await conn.scalar(
                sa.text("SELECT input FROM task WHERE id = :id"), {"id": ids["b"]}
            )
        assert bound == {"numbers": [1, 5]}


@pytest.fixture
async def other_engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """A second engine: its writes never share a group commit with `engine`'s."""
    engine = create_engine(settings.require_database_url(), pool_size=2)
    yield engine
    await engine.dispose()


@HINTS
async def test_two_parents_ending_at_once_make_their_child_ready_once(
    engine: AsyncEngine, other_engine: AsyncEngine, pool: ArqRedis, hinted: bool
) -> None:
    for _ in range(15):
        ids = await submit(engine, pool, step("a"), step("b"), step("c", "a", "b"))
        for key in ("a", "b"):
            start = transitions.started(ids[key], "w")
            assert (await journal.apply_one(engine, pool, start)).accepted
        a_end = replace(transitions.succeeded(ids["a"], 1, {"sum": 1}), step=hinted)
        b_end = replace(transitions.succeeded(ids["b"], 1, {"sum": 2}), step=hinted)
        await asyncio.gather(
            journal.apply_one(engine, pool, a_end), journal.apply_one(other_engine, pool, b_end)
        )
        assert await state(engine, ids["c"]) == ("QUEUED", None, 1)


async def test_one_submission_of_several_workflows_keeps_each_apart(
    engine: AsyncEngine, pool: ArqRedis
) -> None:
    """Workflows submitted together get their own steps; a key used twice in the batch
    (and again later) gives the first workflow."""
    specs = [
        WorkflowSpec(steps=(step("a"), step("b", "a")), idempotency_key="k1"),
        WorkflowSpec(steps=(step("x"),)),
        WorkflowSpec(steps=(step("a"),), idempotency_key="k1"),
    ]
    first, second, again = await workflows.submit(
        engine=engine, pool=pool, owner="wj-batch", specs=specs, actor=T
    )
    assert again == first and second.id != first.id
    (later,) = await workflows.submit(
        engine=engine, pool=pool, owner="wj-batch", specs=[specs[2]], actor=T
    )
    assert later == first
    found = await workflows.steps(engine=engine, workflow_ids=[first.id, second.id])
    assert [(s.key, s.depends_on) for s in found[first.id]] == [("a", []), ("b", ["a"])]
    assert [s.key for s in found[second.id]] == ["x"]
    async with engine.connect() as conn:
        count = await conn.scalar(sa.text("SELECT count(*) FROM task WHERE owner = 'wj-batch'"))
    assert count == 3


async def test_retry_task_and_retry_tasks_leave_steps_to_retry_workflow(
    engine: AsyncEngine, pool: ArqRedis
) -> None:
    ids = await submit(engine, pool, step("a"))
    assert (await journal.apply_one(engine, pool, transitions.started(ids["a"], "w"))).accepted
    failed = transitions.failed(ids["a"], 1, transitions.TaskErrorCode.TASK_ERROR, "boom")
    assert (await journal.apply_one(engine, pool, failed)).accepted
    with pytest.raises(Conflict, match="retryWorkflow"):
        await control.retry(
            engine=engine, redis=pool, pool=pool, task_id=ids["a"], owner="wj", actor=T
        )
    again = await control.retry_many(
        engine=engine, redis=pool, pool=pool, owner="wj", filter=TaskCriteria(), most=10, actor=T
    )
    assert again == 0
    assert (await state(engine, ids["a"]))[0] == "FAILED"


async def test_a_step_made_ready_is_queued_ahead_of_tasks_submitted_after_its_workflow(
    engine: AsyncEngine, pool: ArqRedis
) -> None:
    """A ready step keeps its workflow's place: its job's score is its submission time, so
    it starts before what was submitted after its workflow (same priority), and a backlog
    of new workflows does not hold back the ones already running."""
    ids = await submit(engine, pool, step("a"), step("b", "a"))
    later = await plain_task(engine, pool)
    await asyncio.sleep(0.05)  # the step is made ready well after `later` was enqueued
    await run(engine, pool, ids["a"], 1)
    queue_key = queue.key(pool.default_queue_name, queue.DEFAULT_QUEUE)
    ready = await pool.zscore(queue_key, str(ids["b"]))
    waiting = await pool.zscore(queue_key, str(later.id))
    assert ready is not None and waiting is not None
    assert ready < waiting


async def test_cancel_workflow_interrupts_a_step_that_started_while_it_cancelled(
    engine: AsyncEngine, other_engine: AsyncEngine, pool: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's start takes no workflow lock: a step that starts while cancelWorkflow runs
    is flagged and told to stop too, not left running to its end."""
    ids = await submit(engine, pool, step("a"), step("b"))
    assert (await journal.apply_one(engine, pool, transitions.started(ids["a"], "w"))).accepted
    real = workflows.settle

    async def start_b_first(conn: Any, noted: Any, after: Any, actor: Any) -> Any:
        start = transitions.started(ids["b"], "w2")
        assert (await journal.apply_one(other_engine, pool, start)).accepted
        monkeypatch.setattr(workflows, "settle", real)
        return await real(conn, noted, after, actor)

    monkeypatch.setattr(workflows, "settle", start_b_first)
    (workflow_id,) = {s.workflow_id for s in await tasks_of(engine, ids)}
    await workflows.cancel(engine=engine, redis=pool, workflow_id=workflow_id, owner="wj", actor=T)
    for key in ("a", "b"):
        async with engine.connect() as conn:
            flagged = await conn.scalar(
                sa.text("SELECT cancel_requested FROM task WHERE id = :id"), {"id": ids[key]}
            )
        assert flagged, f"step {key} runs on: never told to stop"


async def test_a_failed_settling_fails_only_its_writer_and_the_others_are_answered(
    engine: AsyncEngine, pool: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One statement committed a plain task's end; settling a step's end of the same group
    failed after it. The plain task's writer is told its change was accepted (and it is
    published); the step's writer gets the error and may write again."""
    ids = await submit(engine, pool, step("a"), step("b", "a"))
    plain = await plain_task(engine, pool)
    for task_id in (ids["a"], plain.id):
        assert (await journal.apply_one(engine, pool, transitions.started(task_id, "w"))).accepted
    real = dag.settle

    async def fail_once(conn: Any, noted: Any, after: Any) -> Any:
        monkeypatch.setattr(dag, "settle", real)
        raise RuntimeError("settling failed")

    monkeypatch.setattr(dag, "settle", fail_once)
    plain_end, step_end = await asyncio.gather(
        journal.apply_one(engine, pool, transitions.succeeded(plain.id, 1, {"ok": 1})),
        journal.apply_one(engine, pool, transitions.succeeded(ids["a"], 1, {"sum": 1})),
        return_exceptions=True,
    )
    assert isinstance(plain_end, Outcome) and plain_end.accepted
    assert isinstance(step_end, RuntimeError)
    assert (await state(engine, ids["a"]))[0] == "RUNNING"  # nothing of it was written
    again = await journal.apply_one(engine, pool, transitions.succeeded(ids["a"], 1, {"sum": 1}))
    assert again.accepted and await state(engine, ids["b"]) == ("QUEUED", None, 1)


async def tasks_of(engine: AsyncEngine, ids: dict[str, uuid.UUID]) -> list[Any]:
    async with engine.connect() as conn:
        found = await conn.execute(
            sa.text("SELECT id, workflow_id FROM task WHERE id = ANY(:ids)"),
            {"ids": list(ids.values())},
        )
        return list(found)


async def test_a_bound_input_check_that_raises_refuses_the_step_not_its_parents_end(
    engine: AsyncEngine, pool: ArqRedis
) -> None:
    """A task type's validator raising something other than a validation error (a bug of
    its own) fails the step being made ready with BAD_INPUT; the parent's end, which made
    it ready, is recorded all the same."""

    def broken(task_type: str, submitted: Any, bound: Any) -> dag.InputChecked:
        raise TypeError("a validator's own bug")

    ids = await submit(engine, pool, step("a"), step("b", "a"))
    previous = dag.check_bound_inputs(broken)
    try:
        await run(engine, pool, ids["a"], 5)
    finally:
        dag.check_bound_inputs(previous)
    assert (await state(engine, ids["a"]))[0] == "SUCCEEDED"
    async with engine.connect() as conn:
        b = (
            await conn.execute(
                sa.text("SELECT status, error_code, error_message FROM task WHERE id = :id"),
                {"id": ids["b"]},
            )
        ).one()
    assert (b.status, b.error_code) == ("FAILED", "BAD_INPUT")
    assert "could not be checked" in b.error_message and "TypeError" in b.error_message


@HINTS
async def test_a_child_made_ready_comes_after_both_parents_ends_in_stream_order(
    engine: AsyncEngine,
    other_engine: AsyncEngine,
    pool: ArqRedis,
    monkeypatch: pytest.MonkeyPatch,
    hinted: bool,
) -> None:
    """Streams follow (xid, id) order. Parent a's end writes its row, and before a's
    transaction settles the workflow, parent b's end runs whole: a's transaction then makes
    the child ready. Its StepReady must still come after b's end: the end that settles last
    takes its xid last (journal.lock_workflows: a's transaction locked the workflow before
    writing, so b's waited for it)."""
    ids = await submit(engine, pool, step("a"), step("b"), step("c", "a", "b"))
    for key in ("a", "b"):
        assert (await journal.apply_one(engine, pool, transitions.started(ids[key], "w"))).accepted
    a_end = replace(transitions.succeeded(ids["a"], 1, {"sum": 1}), step=hinted)
    b_end = replace(transitions.succeeded(ids["b"], 1, {"sum": 2}), step=hinted)
    real = dag.settle
    others: list[asyncio.Task[Outcome]] = []

    async def b_ends_meanwhile(conn: Any, noted: Any, after: Any, actor: Any = None) -> Any:
        if not others:  # a's transaction, a's row written: b's end runs now, on its own
            others.append(asyncio.create_task(journal.apply_one(other_engine, pool, b_end)))
            await asyncio.wait(others, timeout=1.0)  # it waits for a's, or it is done
        return await real(conn, noted, after, actor)

    monkeypatch.setattr(dag, "settle", b_ends_meanwhile)
    assert (await journal.apply_one(engine, pool, a_end)).accepted
    assert (await others[0]).accepted
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text(
                "SELECT task_id, kind, data->>'status' AS status FROM task_event "
                "WHERE task_id = ANY(:ids) AND (kind = 'step_ready' OR data->>'status' = "
                "'SUCCEEDED') ORDER BY xid, id"
            ),
            {"ids": list(ids.values())},
        )
        key_of = {v: k for k, v in ids.items()}
        order = [(key_of[r.task_id], r.kind) for r in rows]
    assert sorted(order[:2]) == [("a", "status"), ("b", "status")], order
    assert order[2:] == [("c", "step_ready")], order
