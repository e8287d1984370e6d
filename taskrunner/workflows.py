"""Workflows: a DAG of steps, each an ordinary task (submitWorkflow, cancelWorkflow,
retryWorkflow, the queries and workflowUpdates).

A workflow's steps are inserted with its row in one transaction; steps without parents are
enqueued once it commits, the others wait QUEUED (`waiting = 'parents'`) out of the queue.
What a step's end does (its children made ready, a failure's cancellations, the
workflow's end) is decided in the transaction that ends it: `taskrunner.dag.settle`. A
workflow's own status changes are events too (WorkflowStatusChanged), recorded on the step
whose change caused them, so `workflowUpdates` is the union of its steps' events, in the
(xid, id) order `tasksUpdates` keeps.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from arq import ArqRedis
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import actors, journal, owner_streams, paging, queue, submissions, transitions
from taskrunner.actors import Actor
from taskrunner.changes import PARENTS, WAITING_PARENTS, json_text
from taskrunner.connections import connection
from taskrunner.dag import (
    AfterCommit,
    Binding,
    StepFailurePolicy,
    WorkflowStatus,
    settle,
)
from taskrunner.errors import Conflict, NotFound
from taskrunner.events import CANCEL_CHANNEL, Event, EventKind, cancel_message
from taskrunner.hub import EventHub
from taskrunner.models import TaskRecord, task_table
from taskrunner.queries import TaskCriteria
from taskrunner.submissions import Submission

TASK_COLUMNS = ", ".join(f"t.{c.name}" for c in task_table.c)
ENDED = frozenset(s.value for s in WorkflowStatus if s is not WorkflowStatus.RUNNING)


@dataclass(frozen=True)
class StepSpec:
    """A validated step: its key, its task (as submitTask would run it), the keys of the
    steps it depends on, and its bindings."""

    key: str
    submission: Submission
    depends_on: tuple[str, ...] = ()
    bindings: tuple[Binding, ...] = ()


@dataclass(frozen=True)
class WorkflowSpec:
    steps: tuple[StepSpec, ...]
    name: str | None = None
    on_step_failure: StepFailurePolicy = StepFailurePolicy.FAIL_WORKFLOW
    labels: tuple[str, ...] = ()
    idempotency_key: str | None = None


@dataclass(frozen=True)
class WorkflowRecord:
    id: uuid.UUID
    owner: str
    name: str | None
    status: str
    on_step_failure: str
    labels: list[str]
    idempotency_key: str | None
    step_count: int
    cancel_requested: bool
    schedule_id: uuid.UUID | None
    scheduled_for: datetime | None
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, row: Any) -> WorkflowRecord:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


COLUMNS = ", ".join(WorkflowRecord.__dataclass_fields__)


def _task_of(row: Any) -> TaskRecord:
    """The task of a row that has its columns (among others: the step's)."""
    return TaskRecord(**{c.name: row[c.name] for c in task_table.c})


@dataclass(frozen=True)
class Step:
    """A step as read: its key, the keys it depends on, its task."""

    key: str
    depends_on: list[str]
    task: TaskRecord


# --- submitWorkflow -----------------------------------------------------------------------

INSERT_WORKFLOWS = f"""
INSERT INTO workflow (id, owner, key_id, name, on_step_failure, labels, idempotency_key,
                      step_count)
SELECT w.id, $2, $3, w.name, w.policy, ARRAY(SELECT jsonb_array_elements_text(w.labels)),
       w.key, w.steps
FROM unnest($1::uuid[], $4::text[], $5::text[], $6::jsonb[], $7::text[], $8::int[])
     WITH ORDINALITY AS w(id, name, policy, labels, key, steps, n)
ORDER BY w.n
ON CONFLICT (owner, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING {COLUMNS}"""
# The workflows holding the keys, those submitted within the keys' time to live ($3: NULL
# for ever); a key held past it is released in the same statement (as
# submissions.EXISTING does for tasks), so the next insert takes it over.
FIRST_WORKFLOWS = f"""
WITH released AS (
  UPDATE workflow SET idempotency_key = NULL
  WHERE $3::interval IS NOT NULL AND owner = $1 AND idempotency_key = ANY($2::text[])
    AND created_at < statement_timestamp() - $3::interval
  RETURNING id
)
SELECT {COLUMNS} FROM workflow WHERE owner = $1 AND idempotency_key = ANY($2::text[])
  AND ($3::interval IS NULL OR created_at >= statement_timestamp() - $3::interval)"""
INSERT_STEPS = """
INSERT INTO workflow_step (task_id, workflow_id, key, position, depends_on, bindings, input)
SELECT s.task_id, s.workflow_id, s.key, s.position,
       ARRAY(SELECT jsonb_array_elements_text(s.parents)), s.bindings, s.input
FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::int[], $5::jsonb[], $6::jsonb[],
            $7::jsonb[]) AS s(task_id, workflow_id, key, position, parents, bindings, input)"""


async def submit(
    *,
    engine: AsyncEngine,
    pool: ArqRedis,
    owner: str,
    specs: Sequence[WorkflowSpec],
    actor: Actor,
    key_id: uuid.UUID | None = None,
    key_ttl: timedelta | None = None,
) -> list[WorkflowRecord]:
    """Create the workflows and every step's task (with its QUEUED event) in one
    transaction, a few statements however many there are; once committed, enqueue the
    steps without parents. A repeated `idempotency_key` of the owner (also within `specs`)
    returns the first workflow, unchanged, unless that was submitted more than `key_ttl`
    ago (IDEMPOTENCY_KEY_TTL_HOURS): then the key is released and a new workflow made."""
    ids = [uuid.uuid4() for _ in specs]

    async def work(
        conn: asyncpg.Connection,
    ) -> tuple[list[WorkflowRecord], list[TaskRecord], list[Event]]:
        created, first = await _insert_workflows(
            conn, owner, key_id, list(zip(ids, specs, strict=True)), key_ttl
        )
        new = [(i, s) for i, s in zip(ids, specs, strict=True) if i in created]
        subs = [
            step.submission.as_step(
                i, step.key, WAITING_PARENTS if step.depends_on else None, key_id
            )
            for i, spec in new
            for step in spec.steps
        ]
        tasks: list[TaskRecord] = []
        events: list[Event] = []
        if subs:
            (tasks,), events = await submissions.insert(conn, [(owner, subs, actor)])
            steps = [(i, n, step) for i, spec in new for n, step in enumerate(spec.steps)]
            await conn.execute(
                INSERT_STEPS,
                [task.id for task in tasks],
                [i for i, _, _ in steps],
                [step.key for _, _, step in steps],
                [n for _, n, _ in steps],
                [json_text(list(step.depends_on)) for _, _, step in steps],
                [json_text([b.to_json() for b in step.bindings]) for _, _, step in steps],
                [json_text(step.submission.input) for _, _, step in steps],
            )
        found = [
            created[i] if i in created else first[s.idempotency_key]
            for i, s in zip(ids, specs, strict=True)
        ]
        return found, tasks, events

    records, tasks, events = await journal.run_transaction(engine, work)
    if tasks:
        await submissions.announce(pool, tasks, events)
    return records


async def _insert_workflows(
    conn: asyncpg.Connection,
    owner: str,
    key_id: uuid.UUID | None,
    todo: list[tuple[uuid.UUID, WorkflowSpec]],
    key_ttl: timedelta | None,
) -> tuple[dict[uuid.UUID, WorkflowRecord], dict[str | None, WorkflowRecord]]:
    """Insert the workflow rows: those created by id, and the workflows already holding
    the others' keys by key. A key held past `key_ttl` is released and inserted again
    (at most submissions.KEY_ROUNDS inserts, the last look taking any holder)."""
    created: dict[uuid.UUID, WorkflowRecord] = {}
    first: dict[str | None, WorkflowRecord] = {}
    for attempt in range(submissions.KEY_ROUNDS):
        rows = await conn.fetch(
            INSERT_WORKFLOWS,
            [i for i, _ in todo],
            owner,
            key_id,
            [s.name for _, s in todo],
            [s.on_step_failure.value for _, s in todo],
            [json_text(list(s.labels)) for _, s in todo],
            [s.idempotency_key for _, s in todo],
            [len(s.steps) for _, s in todo],
        )
        created |= {r["id"]: WorkflowRecord.of(r) for r in rows}
        keys = [s.idempotency_key for i, s in todo if i not in created]
        if not keys:
            break
        ttl = key_ttl if attempt < submissions.KEY_ROUNDS - 1 else None
        found = await conn.fetch(FIRST_WORKFLOWS, owner, keys, ttl)
        first |= {r["idempotency_key"]: WorkflowRecord.of(r) for r in found}
        todo = [(i, s) for i, s in todo if i not in created and s.idempotency_key not in first]
        if not todo:
            break
    else:
        raise RuntimeError("workflow idempotency keys without a workflow after every insert")
    return created, first


# --- queries --------------------------------------------------------------------------------


async def get(
    *, engine: AsyncEngine, workflow_id: uuid.UUID, owner: str | None
) -> WorkflowRecord | None:
    """The workflow, if it exists and `owner` may see it (None: any owner's)."""
    async with connection(engine) as conn:
        row = await conn.fetchrow(
            f"SELECT {COLUMNS} FROM workflow WHERE id = $1 AND ($2::text IS NULL OR owner = $2)",
            workflow_id,
            owner,
        )
    return WorkflowRecord.of(row) if row else None


async def require(
    *, engine: AsyncEngine, workflow_id: uuid.UUID, owner: str | None
) -> WorkflowRecord:
    found = await get(engine=engine, workflow_id=workflow_id, owner=owner)
    if found is None:
        raise NotFound(
            f"no workflow with id {workflow_id}; check the id returned by submitWorkflow"
        )
    return found


async def steps(
    *, engine: AsyncEngine, workflow_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[Step]]:
    """The workflows' steps, in the order they were submitted."""
    async with connection(engine) as conn:
        rows = await conn.fetch(
            f"SELECT s.workflow_id AS s_workflow, s.key AS s_key, s.depends_on AS s_depends, "
            f"{TASK_COLUMNS} FROM workflow_step s JOIN task t ON t.id = s.task_id "
            "WHERE s.workflow_id = ANY($1::uuid[]) ORDER BY s.workflow_id, s.position",
            list(workflow_ids),
        )
    found: dict[uuid.UUID, list[Step]] = {w: [] for w in workflow_ids}
    for r in rows:
        found[r["s_workflow"]].append(Step(r["s_key"], list(r["s_depends"]), _task_of(r)))
    return found


async def waiting_on(
    *, engine: AsyncEngine, task_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[TaskRecord]]:
    """For step tasks: their parents that have not SUCCEEDED (empty for other tasks)."""
    async with connection(engine) as conn:
        rows = await conn.fetch(
            f"""SELECT c.task_id AS child, {TASK_COLUMNS}
                FROM workflow_step c
                JOIN workflow_step p ON p.workflow_id = c.workflow_id AND p.key = ANY(c.depends_on)
                JOIN task t ON t.id = p.task_id
                WHERE c.task_id = ANY($1::uuid[]) AND t.status <> 'SUCCEEDED'
                ORDER BY p.position""",
            list(task_ids),
        )
    found: dict[uuid.UUID, list[TaskRecord]] = {t: [] for t in task_ids}
    for r in rows:
        found[r["child"]].append(_task_of(r))
    return found


def parents_of(found: Mapping[str, Any] | None) -> tuple[dict[str, Any], datetime | None]:
    """A step's parents' results by step key (`ctx.parent_results`) and when the last of
    them finished (None: it has no parents), from changes.PARENTS as read."""
    found = found or {}
    ready_at = found.get("ready_at")
    return dict(found.get("results") or {}), datetime.fromisoformat(ready_at) if ready_at else None


async def parent_results(
    engine: AsyncEngine, task_id: uuid.UUID
) -> tuple[dict[str, Any], datetime | None]:
    """`parents_of` the step `task_id`. A start reads them with the row it locks
    (changes.ROW_COLUMNS); this is for a worker that finds its start committed after all."""
    async with connection(engine) as conn:
        found = await conn.fetchval(f"SELECT {PARENTS} FROM task t WHERE t.id = $1", task_id)
    return parents_of(found)


@dataclass(frozen=True)
class WorkflowPage:
    workflows: list[WorkflowRecord]
    has_next_page: bool

    @staticmethod
    def cursor_of(w: WorkflowRecord) -> str:
        return paging.encode(w.created_at, w.id)


async def list_workflows(
    *,
    engine: AsyncEngine,
    owner: str | None,
    first: int,
    after: str | None,
    status: Sequence[str] = (),
    label: str | None = None,
) -> WorkflowPage:
    """The owner's workflows, newest first, of the given statuses and label (if any)."""
    at, wid = paging.decode(after, "workflows") if after else (None, None)
    async with connection(engine) as conn:
        rows = await conn.fetch(
            f"""SELECT {COLUMNS} FROM workflow
                WHERE ($1::text IS NULL OR owner = $1)
                  AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::uuid))
                  AND (cardinality($4::text[]) = 0 OR status = ANY($4::text[]))
                  AND ($5::text IS NULL OR $5 = ANY(labels))
                ORDER BY created_at DESC, id DESC LIMIT $6""",
            owner,
            at,
            wid,
            list(status),
            label,
            first + 1,
        )
    found = [WorkflowRecord.of(r) for r in rows]
    return WorkflowPage(found[:first], len(found) > first)


# --- cancelWorkflow and retryWorkflow -------------------------------------------------------


async def _locked(conn: asyncpg.Connection, workflow_id: uuid.UUID) -> dict[str, Any]:
    row = await conn.fetchrow(
        "SELECT id, status FROM workflow WHERE id = $1 FOR UPDATE", workflow_id
    )
    assert row is not None  # workflows are never deleted
    return dict(row)


async def cancel(
    *,
    engine: AsyncEngine,
    redis: Redis,
    workflow_id: uuid.UUID,
    owner: str | None,
    actor: Actor,
) -> WorkflowRecord:
    """Cancel every unfinished step: QUEUED ones at once, RUNNING ones interrupted (their
    workers record CANCELLED); the workflow ends CANCELLED once every step has ended.
    A finished workflow: CONFLICT."""
    await require(engine=engine, workflow_id=workflow_id, owner=owner)

    async def work(conn: asyncpg.Connection, after: AfterCommit) -> list[tuple[uuid.UUID, int]]:
        workflow = await _locked(conn, workflow_id)
        if workflow["status"] != WorkflowStatus.RUNNING:
            raise Conflict(
                f"workflow {workflow_id} is already {workflow['status']}; only a RUNNING "
                "workflow can be cancelled (retryWorkflow runs its FAILED and CANCELLED steps "
                "again)"
            )
        await conn.execute("UPDATE workflow SET cancel_requested = true WHERE id = $1", workflow_id)
        # the QUEUED steps first: a worker's start takes no workflow lock, so a step started
        # meanwhile is refused its cancel there, and read below as RUNNING (a statement of
        # its own, after: it sees every start committed before), then interrupted
        await settle(conn, {workflow_id: None}, after, actor)
        running = await conn.fetch(
            "SELECT id, attempts FROM task WHERE workflow_id = $1 AND status = 'RUNNING'",
            workflow_id,
        )
        changes = [
            actors.recorded(transitions.cancel_requested(r["id"], r["attempts"]), actor)
            for r in running
        ]
        outcomes = await journal.record(conn, changes, after, settle=False)
        after.events.extend(o.event for o in outcomes if o.event is not None)
        return [
            (o.change.task_id, r["attempts"])
            for o, r in zip(outcomes, running, strict=True)
            if o.accepted
        ]

    running = await journal.transact(engine, redis, work)
    if running:
        async with redis.pipeline(transaction=False) as pipe:
            for task_id, attempt in running:
                pipe.publish(CANCEL_CHANNEL, cancel_message(task_id, attempt))
            await pipe.execute()
    return await require(engine=engine, workflow_id=workflow_id, owner=owner)


async def retry(
    *,
    engine: AsyncEngine,
    redis: Redis,
    workflow_id: uuid.UUID,
    owner: str | None,
    actor: Actor,
) -> WorkflowRecord:
    """Run a FAILED or CANCELLED workflow's FAILED and CANCELLED steps again (each a new
    attempt, with its input as submitted): those whose parents all SUCCEEDED at once, the
    others once their parents have. SUCCEEDED steps keep their results. Else CONFLICT."""
    await require(engine=engine, workflow_id=workflow_id, owner=owner)

    async def work(conn: asyncpg.Connection, after: AfterCommit) -> None:
        workflow = await _locked(conn, workflow_id)
        if workflow["status"] not in (WorkflowStatus.FAILED, WorkflowStatus.CANCELLED):
            raise Conflict(
                f"workflow {workflow_id} is {workflow['status']}; only a FAILED or CANCELLED "
                "workflow can be retried"
            )
        rows = await conn.fetch(
            "SELECT s.task_id, s.depends_on, s.input, t.status, t.type, t.priority, t.queue, "
            "t.concurrency_key, t.owner, t.rate_limit "
            "FROM workflow_step s JOIN task t ON t.id = s.task_id "
            "WHERE s.workflow_id = $1 ORDER BY s.position",
            workflow_id,
        )
        again = [r for r in rows if r["status"] in ("FAILED", "CANCELLED")]
        await conn.execute(
            "UPDATE workflow SET status = 'RUNNING', finished_at = NULL, cancel_requested = false "
            "WHERE id = $1",
            workflow_id,
        )
        workflow.update(status="RUNNING", cancel_requested=False)
        # a step with parents waits for them (and is bound again) even when they SUCCEEDED:
        # settling below makes it ready at once then
        changes = [
            transitions.step_retried(r["task_id"], r["input"], waits=bool(r["depends_on"]))
            for r in again
        ]
        if again:
            changes.append(
                transitions.workflow_changed(again[0]["task_id"], workflow_id, "RUNNING")
            )
        changes = actors.all_recorded(changes, actor)
        outcomes = await journal.record(conn, changes, after, settle=False)
        after.events.extend(o.event for o in outcomes if o.event is not None)
        after.jobs.extend(
            queue.Job(
                r["type"],
                r["task_id"],
                r["priority"],
                r["queue"],
                r["concurrency_key"] is not None,
                owner=r["owner"],
                rate_limit=r["rate_limit"],
            )
            for r in again
            if not r["depends_on"]
        )
        await settle(conn, {workflow_id: None}, after, actor)

    await journal.transact(engine, redis, work)
    return await require(engine=engine, workflow_id=workflow_id, owner=owner)


async def retry_cost(engine: AsyncEngine, workflow_id: uuid.UUID) -> int:
    """How many steps retryWorkflow would run again now (counted against TASKS_PER_MINUTE)."""
    async with connection(engine) as conn:
        found = await conn.fetchval(
            "SELECT count(*) FROM task WHERE workflow_id = $1 "
            "AND status IN ('FAILED', 'CANCELLED')",
            workflow_id,
        )
    return int(found or 0)


# --- the reconciler's repair ----------------------------------------------------------------

STALLED = """
SELECT w.id FROM workflow w
WHERE w.status = 'RUNNING' AND NOT EXISTS (
  SELECT FROM task t WHERE t.workflow_id = w.id
    AND (t.status = 'RUNNING' OR (t.status = 'QUEUED' AND t.waiting IS DISTINCT FROM $2)))
ORDER BY w.created_at LIMIT $1"""


async def repair(engine: AsyncEngine, redis: Redis, limit: int = 100) -> int:
    """Settle RUNNING workflows none of whose steps runs or waits in the queue: a settling
    lost (it always runs in the transaction that ends a step, so this finds none unless
    something failed in between). Returns how many it settled."""
    async with connection(engine) as conn:
        stalled = [r["id"] for r in await conn.fetch(STALLED, limit, WAITING_PARENTS)]
    if stalled:

        async def work(conn: asyncpg.Connection, after: AfterCommit) -> None:
            await settle(conn, dict.fromkeys(stalled), after)

        await journal.transact(engine, redis, work)
    return len(stalled)


# --- workflowUpdates --------------------------------------------------------------------------


async def events(
    *,
    engine: AsyncEngine,
    hub: EventHub,
    workflow: WorkflowRecord,
    after_id: int | None,
    quiet_seconds: float,
) -> AsyncIterator[Event]:
    """Every event of the workflow's steps (its own WorkflowStatusChanged among them) after
    `after_id` (from the first without it), in (xid, id) order, each once; it completes
    after the event that ended the workflow."""
    async with connection(engine) as conn:
        ids = [
            r["task_id"]
            for r in await conn.fetch(
                "SELECT task_id FROM workflow_step WHERE workflow_id = $1", workflow.id
            )
        ]
        if workflow.status in ENDED:  # resumed after its end: nothing more will come
            last = await conn.fetchrow(
                "SELECT xid, id FROM task_event WHERE task_id = ANY($1::uuid[]) AND kind = $2 "
                "ORDER BY xid DESC, id DESC LIMIT 1",
                ids,
                EventKind.WORKFLOW.value,
            )
            cursor = None
            if after_id is not None:
                cursor = await conn.fetchrow(
                    "SELECT xid, id FROM task_event WHERE id = $1", after_id
                )
            if (
                last is not None
                and cursor is not None
                and (cursor["xid"], cursor["id"]) >= (last["xid"], last["id"])
            ):
                return
    async for event in owner_streams.owner_events(
        engine=engine,
        hub=hub,
        owner=workflow.owner,
        after_id=after_id,
        filter=TaskCriteria(),
        quiet_seconds=quiet_seconds,
        task_ids=frozenset(ids),
    ):
        yield event
        if (
            event.kind is EventKind.WORKFLOW
            and event.data.get("status") in ENDED
            and not await _later_note(engine, ids, event)  # not an end run again since
        ):
            return


async def _later_note(engine: AsyncEngine, ids: Sequence[uuid.UUID], event: Event) -> bool:
    """Whether a WorkflowStatusChanged of these steps follows `event` (retryWorkflow ran the
    workflow again after that end)."""
    async with connection(engine) as conn:
        found = await conn.fetchval(
            "SELECT EXISTS (SELECT FROM task_event WHERE task_id = ANY($1::uuid[]) "
            "AND kind = $2 AND (xid, id) > ($3, $4))",
            list(ids),
            EventKind.WORKFLOW.value,
            event.xid,
            event.id,
        )
    return bool(found)
