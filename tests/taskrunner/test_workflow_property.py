"""Property: a workflow run by workers, in any order they start and end its steps, ends as
its DAG and its onStepFailure say. The test is the worker: it starts what the queue holds
(QUEUED, not waiting, not due) and records each attempt's outcome through the journal as
the runner does; a reference model of its own decides after every move what each step and
the workflow must be. Along the way: a step starts only once all its parents SUCCEEDED,
never more often than its attempts, and every ready step is in the queue; at the end no
step is left QUEUED."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Literal

import sqlalchemy as sa
from arq import ArqRedis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import actors, journal, queue, reconciler, transitions, workflows
from taskrunner.changes import Change
from taskrunner.dag import StepFailurePolicy
from taskrunner.states import TaskStatus
from taskrunner.submissions import Submission
from taskrunner.transitions import TaskErrorCode

T = actors.key("tester", "tester")  # the actor of the changes these tests make

Plan = Literal["succeed", "fail", "retry", "retry_fail"]  # retry: fail, then the next attempt
ATTEMPTS: dict[Plan, int] = {"succeed": 1, "fail": 1, "retry": 2, "retry_fail": 2}
WORKER = "wfprop-worker"
OWNER = "wfprop"


@dataclass(frozen=True)
class Dag:
    parents: list[tuple[int, ...]]  # step i's parents: earlier steps
    plans: list[Plan]
    policy: StepFailurePolicy


@st.composite
def dags(draw: st.DrawFn) -> Dag:
    n = draw(st.integers(2, 8))
    parents = [
        tuple(j for j in range(i) if draw(st.booleans(), label=f"edge {j}->{i}")) for i in range(n)
    ]
    plans: list[Plan] = draw(st.lists(st.sampled_from(list(ATTEMPTS)), min_size=n, max_size=n))
    return Dag(parents, plans, draw(st.sampled_from(list(StepFailurePolicy))))


def key(i: int) -> str:
    return f"s{i}"


# --- the reference model ----------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    status: str
    waiting: bool
    due: bool
    attempts: int
    error_code: str | None


@dataclass
class Model:
    """What each step must be: written from the documented rules, not from taskrunner.dag."""

    dag: Dag
    status: list[str] = field(default_factory=list)
    waiting: list[bool] = field(default_factory=list)
    due: list[bool] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)
    code: list[str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.dag.plans)
        self.status = ["QUEUED"] * n
        self.waiting = [bool(p) for p in self.dag.parents]
        self.due = [False] * n
        self.attempts = [0] * n
        self.code = [None] * n

    def children(self, i: int) -> list[int]:
        return [c for c, ps in enumerate(self.dag.parents) if i in ps]

    def startable(self) -> list[int]:
        return [
            i
            for i, s in enumerate(self.status)
            if s == "QUEUED" and not self.waiting[i] and not self.due[i]
        ]

    def start(self, i: int) -> None:
        self.status[i] = "RUNNING"
        self.attempts[i] += 1

    def finish(self, i: int) -> str:
        """The planned end of step i's current attempt; what it does to the others."""
        plan, attempt = self.dag.plans[i], self.attempts[i]
        if plan == "succeed" or (plan == "retry" and attempt == 2):
            self.status[i] = "SUCCEEDED"
            self.code[i] = None
            for c in self.children(i):
                if self.waiting[c] and all(
                    self.status[p] == "SUCCEEDED" for p in self.dag.parents[c]
                ):
                    self.waiting[c] = False
        elif plan in ("retry", "retry_fail") and attempt == 1:
            self.status[i] = "QUEUED"
            self.due[i] = True
            self.code[i] = TaskErrorCode.TASK_ERROR.value
        else:
            self.status[i] = "FAILED"
            self.code[i] = TaskErrorCode.TASK_ERROR.value
            if self.dag.policy is StepFailurePolicy.CONTINUE:
                self._cancel_dependents(i)
        if self.dag.policy is StepFailurePolicy.FAIL_WORKFLOW and "FAILED" in self.status:
            # every step that is not running (nor ended) is cancelled once one has failed
            for j, s in enumerate(self.status):
                if s == "QUEUED":
                    self._cancel(j, TaskErrorCode.WORKFLOW_FAILED)
        return self.status[i]

    def _cancel_dependents(self, i: int) -> None:
        for c in self.children(i):
            if self.status[c] == "QUEUED":
                assert self.waiting[c], "a dependent of an unfinished step is waiting"
                self._cancel(c, TaskErrorCode.DEPENDENCY_FAILED)
                self._cancel_dependents(c)

    def _cancel(self, j: int, code: TaskErrorCode) -> None:
        self.status[j], self.code[j] = "CANCELLED", code.value
        self.waiting[j] = self.due[j] = False

    def make_due(self) -> None:
        self.due = [False] * len(self.due)

    def rows(self) -> list[Row]:
        return [
            Row(s, w, d, a, c)
            for s, w, d, a, c in zip(
                self.status, self.waiting, self.due, self.attempts, self.code, strict=True
            )
        ]

    def workflow_status(self) -> str:
        if any(s in ("QUEUED", "RUNNING") for s in self.status):
            return "RUNNING"
        if "FAILED" in self.status:
            return "FAILED"
        if "CANCELLED" in self.status:
            return "CANCELLED"
        return "SUCCEEDED"


# --- the product, read and driven as a worker -------------------------------------------------


@dataclass(frozen=True)
class Seen:
    ids: list[uuid.UUID]
    rows: list[Row]
    workflow: str


async def read(engine: AsyncEngine, workflow_id: uuid.UUID) -> Seen:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.text(
                    "SELECT t.id, t.status, t.waiting, t.due_at, t.attempts, t.error_code "
                    "FROM workflow_step s JOIN task t ON t.id = s.task_id "
                    "WHERE s.workflow_id = :w ORDER BY s.position"
                ),
                {"w": workflow_id},
            )
        ).all()
        status = await conn.scalar(
            sa.text("SELECT status FROM workflow WHERE id = :w"), {"w": workflow_id}
        )
    return Seen(
        [r.id for r in rows],
        [
            Row(
                r.status,
                r.waiting == "parents",
                r.status == "QUEUED" and r.due_at is not None,  # due_at: only QUEUED waits
                r.attempts,
                r.error_code,
            )
            for r in rows
        ],
        str(status),
    )


async def submit(engine: AsyncEngine, pool: ArqRedis, dag: Dag) -> uuid.UUID:
    steps = tuple(
        workflows.StepSpec(
            key(i),
            Submission(
                "echo", {"message": key(i)}, 60, max_retries=1 if ATTEMPTS[plan] == 2 else 0
            ),
            tuple(key(p) for p in parents),
        )
        for i, (parents, plan) in enumerate(zip(dag.parents, dag.plans, strict=True))
    )
    spec = workflows.WorkflowSpec(steps, name="property", on_step_failure=dag.policy)
    (record,) = await workflows.submit(engine=engine, pool=pool, owner=OWNER, specs=[spec], actor=T)
    return record.id


def end_of(model: Model, i: int, task_id: uuid.UUID) -> Change:
    plan, attempt = model.dag.plans[i], model.attempts[i]
    if plan == "succeed" or (plan == "retry" and attempt == 2):
        return transitions.succeeded(task_id, attempt, {"message": key(i)})
    if plan in ("retry", "retry_fail") and attempt == 1:
        return transitions.requeued(
            task_id, attempt, TaskErrorCode.TASK_ERROR, "boom", 0, max_retries=1
        )
    return transitions.failed(task_id, attempt, TaskErrorCode.TASK_ERROR, "boom")


async def queued_in_redis(pool: ArqRedis, task_id: uuid.UUID) -> bool:
    return (
        await pool.zscore(queue.key(pool.default_queue_name, "default"), str(task_id)) is not None
    )


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(dag=dags(), data=st.data())
async def test_any_run_of_a_workflow_ends_as_its_dag_says(
    engine: AsyncEngine, pool: ArqRedis, dag: Dag, data: st.DataObject
) -> None:
    """After every move, each step's row (status, waiting, due, attempts, error code) and
    the workflow's status are the model's; starts of waiting steps are refused."""
    workflow_id = await submit(engine, pool, dag)
    model = Model(dag)
    seen = await read(engine, workflow_id)
    ids = seen.ids
    starts = [0] * len(ids)
    moves: list[str] = []
    tried_early: set[int] = set()
    for _ in range(6 * len(ids) + 1):  # each step: two attempts, a wait, a refused start
        assert seen.rows == model.rows(), moves
        assert seen.workflow == model.workflow_status(), moves
        startable = [
            i
            for i, r in enumerate(seen.rows)
            if r.status == "QUEUED" and not r.waiting and not r.due
        ]
        assert startable == model.startable()
        for i in startable:  # what the queue holds: a worker will take it
            assert await queued_in_redis(pool, ids[i]), (key(i), moves)
        running = [i for i, r in enumerate(seen.rows) if r.status == "RUNNING"]
        due = [i for i, r in enumerate(seen.rows) if r.status == "QUEUED" and r.due]
        waiting = [i for i, r in enumerate(seen.rows) if r.status == "QUEUED" and r.waiting]
        choices = [
            *(("start", i) for i in startable),
            *(("end", i) for i in running),
            *([("due", -1)] if due else []),
            *(("early", i) for i in waiting if i not in tried_early),
        ]
        if not choices:
            break
        move, i = data.draw(st.sampled_from(choices), label="move")
        moves.append(f"{move} {key(i)}")
        if move == "start":
            await pool.zrem(queue.key(pool.default_queue_name, "default"), str(ids[i]))
            outcome = await journal.apply_one(engine, pool, transitions.started(ids[i], WORKER))
            assert outcome.accepted, moves
            starts[i] += 1
            assert starts[i] <= ATTEMPTS[dag.plans[i]], moves
            parents = (await read(engine, workflow_id)).rows
            assert all(parents[p].status == "SUCCEEDED" for p in dag.parents[i]), moves
            model.start(i)
        elif move == "end":
            outcome = await journal.apply_one(engine, pool, end_of(model, i, ids[i]))
            assert outcome.accepted, moves
            model.finish(i)
        elif move == "due":
            assert await reconciler.enqueue_due(engine, pool) >= len(due)
            model.make_due()
        else:  # a start of a step whose parents have not all SUCCEEDED is refused
            tried_early.add(i)
            outcome = await journal.apply_one(engine, pool, transitions.started(ids[i], WORKER))
            assert not outcome.accepted and outcome.found is TaskStatus.QUEUED, moves
        seen = await read(engine, workflow_id)
    else:
        raise AssertionError(f"still moving after {moves}")
    assert all(r.status != "QUEUED" for r in seen.rows), moves
    assert seen.workflow != "RUNNING", moves
    assert starts == model.attempts


async def test_a_step_requeued_after_another_failed_is_cancelled(
    engine: AsyncEngine, pool: ArqRedis
) -> None:
    """FAIL_WORKFLOW: a step whose attempt fails with a retry left after another step FAILED
    does not run again (as one already waiting for its retry then is cancelled): it is
    CANCELLED (WORKFLOW_FAILED) and the workflow ends FAILED."""
    dag = Dag([(), ()], ["fail", "retry"], StepFailurePolicy.FAIL_WORKFLOW)
    workflow_id = await submit(engine, pool, dag)
    a, b = (await read(engine, workflow_id)).ids
    for task_id in (a, b):
        assert (
            await journal.apply_one(engine, pool, transitions.started(task_id, WORKER))
        ).accepted
    failed = transitions.failed(a, 1, TaskErrorCode.TASK_ERROR, "boom")
    assert (await journal.apply_one(engine, pool, failed)).accepted
    again = transitions.requeued(b, 1, TaskErrorCode.TASK_ERROR, "boom", 0, max_retries=1)
    assert (await journal.apply_one(engine, pool, again)).accepted
    seen = await read(engine, workflow_id)
    assert [(r.status, r.error_code) for r in seen.rows] == [
        ("FAILED", "TASK_ERROR"),
        ("CANCELLED", "WORKFLOW_FAILED"),
    ]
    assert seen.workflow == "FAILED"
