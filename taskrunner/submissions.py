"""The submission write path: validated submissions become QUEUED tasks (each with its
first event) in one statement, then are published and enqueued once committed.

`submit` is what the api calls; `insert` is the statement alone, inside a caller's
transaction (nothing published or enqueued)."""

from __future__ import annotations

import copy
import logging
import os
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import asyncpg
from arq import ArqRedis
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import connections, metrics, queue, tracing
from taskrunner.actors import Actor
from taskrunner.changes import json_text
from taskrunner.events import Event, EventKind, add_publishes
from taskrunner.groupcommit import GroupCommit, Refused
from taskrunner.logs import event
from taskrunner.models import TaskRecord, task_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submission:
    """A validated request to run `type` with `input` (already checked by its model)."""

    type: str
    input: dict[str, Any]
    timeout_seconds: int
    priority: int = 0
    max_retries: int = 0
    scheduled_for: datetime | None = None  # runAt
    delay_seconds: int | None = None  # delaySeconds: counted from the insert, on the DB clock
    idempotency_key: str | None = None
    labels: tuple[str, ...] = ()
    queue: str = "default"
    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    schedule_id: uuid.UUID | None = None  # fired by this schedule, for its tick scheduled_for
    workflow_id: uuid.UUID | None = None  # a step of this workflow (taskrunner.workflows)
    step_key: str | None = None
    waiting: str | None = None  # 'parents': a step that waits for the steps it depends on
    deadline: datetime | None = None  # never started after it (DEADLINE_EXCEEDED)
    rate_limit: str | None = None  # str(rates.Rate): its starts are held to it
    parent_id: uuid.UUID | None = None  # submitted by this task's body (ctx.submit)
    detached: bool = False  # a cancel of its parent leaves it be
    webhook_url: str | None = None  # its final status is POSTed there (taskrunner.webhooks)
    key_id: uuid.UUID | None = None  # the API key that submitted it (signs its webhooks)

    def as_step(
        self,
        workflow_id: uuid.UUID,
        step_key: str,
        waiting: str | None,
        key_id: uuid.UUID | None = None,
    ) -> Submission:
        """This submission as a step of the workflow `workflow_id` submitted by the key
        `key_id`: a copy with those four fields (dataclasses.replace does the same at
        several times the cost, which shows in a submitWorkflows of thousands of steps)."""
        step = copy.copy(self)
        object.__setattr__(step, "workflow_id", workflow_id)  # a frozen dataclass's own way
        object.__setattr__(step, "step_key", step_key)
        object.__setattr__(step, "waiting", waiting)
        object.__setattr__(step, "key_id", key_id)
        return step


MAX_GROUP_REQUESTS = 100  # submit() calls (up to MAX_BATCH_SIZE tasks each) in one transaction

Unit = tuple[
    str, Sequence[Submission], Actor, bool
]  # owner, submissions, actor, crash_after_commit
# Live groups by (engine, Redis, arq pool), as in journal._groups: held by their users only.
_groups: weakref.WeakValueDictionary[
    tuple[int, int, int, timedelta | None], GroupCommit[Unit, list[TaskRecord]]
] = weakref.WeakValueDictionary()


async def submit(
    *,
    engine: AsyncEngine,
    redis: Redis,
    pool: ArqRedis,
    owner: str,
    submissions: Sequence[Submission],
    actor: Actor,
    crash_after_commit: bool = False,
    key_ttl: timedelta | None = None,
) -> list[TaskRecord]:
    """Insert the tasks and their QUEUED events (by `actor`) in one transaction, publish,
    then enqueue. A submission whose idempotency key the owner already used returns the
    first task, unless that was submitted more than `key_ttl` ago (IDEMPOTENCY_KEY_TTL_HOURS).
    Concurrent submissions of this process share the transaction (group commit)."""
    key = (id(engine), id(redis), id(pool), key_ttl)
    group = _groups.get(key)
    if group is None:

        async def flush(units: list[Unit]) -> list[list[TaskRecord]]:
            return await _submit_now(engine, redis, pool, units, key_ttl)

        group = _groups[key] = GroupCommit(flush, MAX_GROUP_REQUESTS)
    return await group.submit((owner, submissions, actor, crash_after_commit))


async def _submit_now(
    engine: AsyncEngine, redis: Redis, pool: ArqRedis, units: list[Unit], key_ttl: timedelta | None
) -> list[list[TaskRecord]]:
    async with connections.connection(engine) as conn:
        per_unit, events = await insert(
            conn, [(owner, subs, by) for owner, subs, by, _ in units], key_ttl
        )
    if any(crash for *_, crash in units):
        os._exit(70)  # fault injection: see Settings.test_crash_after_commit
    created = {e.task_id for e in events}  # each new task once, whoever else reused its key
    new = []
    for tasks in per_unit:
        for task in tasks:
            if task.id in created:
                created.discard(task.id)
                new.append(task)
    await announce(pool, new, events)
    return per_unit


async def announce(pool: ArqRedis, tasks: Sequence[TaskRecord], events: Sequence[Event]) -> None:
    """Once the tasks `insert` created are committed: count and log them, then publish
    `events` and enqueue the tasks that are due, in one round trip. Never fails: a task
    left out of the queue is enqueued by the reconciler, and streams re-read PostgreSQL."""
    jobs = []
    for task in tasks:
        metrics.TASKS_SUBMITTED.labels(task.type).inc()
        fired: dict[str, Any] = {}
        if task.schedule_id is not None and task.scheduled_for is not None:
            fired = {
                "schedule_id": str(task.schedule_id),
                "scheduled_for": task.scheduled_for.isoformat(),
            }
        event(
            "task_submitted",
            task_id=str(task.id),
            task_type=task.type,
            owner=task.owner,
            **fired,
        )
        if not task.due_at and task.waiting is None:
            jobs.append(queue.job_of(task))
    try:
        async with pool.pipeline(transaction=False) as pipe:
            add_publishes(pipe, events)
            queue.add_enqueues(pipe, pool.default_queue_name, jobs)
            await pipe.execute()
    except Exception as exc:  # committed: the reconciler enqueues it, never fail or lose it
        log.warning("could not enqueue %d tasks (%s); the reconciler will", len(jobs), exc)


TASK_COLUMNS = tuple(c.name for c in task_table.c)
# Tasks and their QUEUED events in one statement (one round trip, and a task's createdAt
# is that close to its commit). createdAt is the database clock: the group's (below) or
# clock_timestamp() at the row. Labels travel as JSON (arrays of arrays must be regular).
INSERT_TASKS = f"""
WITH s AS (
  SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::int[], $6::int[],
                       $7::int[], $8::text[], $9::jsonb[], $10::text[], $11::timestamptz[],
                       $12::timestamptz[], $13::text[], $14::text[], $15::int[], $16::uuid[],
                       $17::uuid[], $18::text[], $19::text[], $20::timestamptz[], $21::text[],
                       $22::uuid[], $23::boolean[], $24::text[], $25::uuid[], $26::jsonb[])
    AS s(id, owner, type, input, priority, max_retries, timeout_seconds, idempotency_key,
         labels, trace_parent, scheduled_for, due_at, queue, concurrency_key,
         concurrency_limit, schedule_id, workflow_id, step_key, waiting, deadline,
         rate_limit, parent_id, detached, webhook_url, key_id, actor)
),
t AS (
  INSERT INTO task (id, owner, type, status, input, priority, max_retries, timeout_seconds,
                    idempotency_key, labels, trace_parent, scheduled_for, due_at, queue,
                    concurrency_key, concurrency_limit, schedule_id, workflow_id, step_key,
                    waiting, deadline, rate_limit, parent_id, detached, webhook_url, key_id,
                    event_seq, created_at)
  SELECT id, owner, type, 'QUEUED', input, priority, max_retries, timeout_seconds,
         idempotency_key, ARRAY(SELECT jsonb_array_elements_text(labels)), trace_parent,
         scheduled_for, due_at, queue, concurrency_key, concurrency_limit, schedule_id,
         workflow_id, step_key, waiting, deadline, rate_limit, parent_id, detached,
         webhook_url, key_id, 1, coalesce($27::timestamptz, clock_timestamp())
  FROM s
  ON CONFLICT (owner, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
  RETURNING *
),
e AS (
  INSERT INTO task_event (task_id, seq, owner, kind, data)
  SELECT t.id, 1, t.owner, '{EventKind.STATUS.value}',
         jsonb_build_object('status', 'QUEUED', 'actor', s.actor)
  FROM t JOIN s ON s.id = t.id
  RETURNING id, task_id, xid, at, data
)
SELECT t.*, e.id AS e_id, e.xid AS e_xid, e.at AS e_at, e.data AS e_data
FROM t JOIN e ON e.task_id = t.id ORDER BY e.id"""
# The tasks holding the keys, those submitted within the keys' time to live ($3: NULL for
# ever). A key held past it is released (the old task's idempotency_key set to NULL) in
# the same statement, so that the unique index lets the next insert take it over; the
# SELECT reads the snapshot before that UPDATE and leaves the released ones out itself.
EXISTING = f"""
WITH k AS (SELECT * FROM unnest($1::text[], $2::text[]) AS k(owner, key)),
released AS (
  UPDATE task t SET idempotency_key = NULL FROM k
  WHERE $3::interval IS NOT NULL AND t.owner = k.owner AND t.idempotency_key = k.key
    AND t.created_at < statement_timestamp() - $3::interval
  RETURNING t.id
)
SELECT {", ".join(f"t.{c}" for c in TASK_COLUMNS)} FROM task t
JOIN k ON t.owner = k.owner AND t.idempotency_key = k.key
WHERE $3::interval IS NULL OR t.created_at >= statement_timestamp() - $3::interval"""
# Inserts at most: the first; again after an expired key was released; once more when a
# key's holder went meanwhile (deleted by retention, or taken by a racing submission that
# then expired, with a TTL of moments).
KEY_ROUNDS = 3


async def insert(
    conn: asyncpg.Connection,
    units: Sequence[tuple[str, Sequence[Submission], Actor]],
    key_ttl: timedelta | None = None,
) -> tuple[list[list[TaskRecord]], list[Event]]:
    """Insert every unit's tasks (a unit: an owner, its submissions and who submitted them,
    taskrunner.actors) with their QUEUED events, in one statement on `conn` (a
    `connections.connection` or `connections.transaction`).
    Returns each unit's tasks in order, an already used idempotency key giving the owner's
    first task, and the events of the tasks created. A key whose task was submitted more
    than `key_ttl` ago (IDEMPOTENCY_KEY_TTL_HOURS; None: never) is released and taken by a
    new task: that costs two more statements, only when it happens.

    Nothing is published or enqueued: `submit` does both once the insert is committed (a
    ready task left out of the queue is enqueued by the reconciler's `requeue_lost`).
    Outside a transaction the insert commits on its own: an error raised from it is
    `Refused` (nothing was written); an error after it is not."""
    # A task that waits (delaySeconds, runAt) needs PostgreSQL's clock before the insert:
    # the whole group then shares it, and createdAt + delaySeconds is exactly the earliest
    # start. Without one, the round trip is saved.
    now: datetime | None = None
    if any(s.delay_seconds or s.scheduled_for for _, subs, _ in units for s in subs):
        now = cast(datetime, await conn.fetchval("SELECT clock_timestamp()"))
    rows = [[_row(s, owner, now, json_text(by)) for s in subs] for owner, subs, by in units]
    flat = [row for unit in rows for row in unit]
    if not flat:
        return [[] for _ in units], []
    inserted: dict[uuid.UUID, TaskRecord] = {}
    events: list[Event] = []
    existing: dict[tuple[str, str | None], TaskRecord] = {}
    todo = flat
    for attempt in range(KEY_ROUNDS):
        await _insert_rows(conn, todo, now, inserted, events, refusable=attempt == 0)
        keys = {(r[1], r[7]) for r in todo if r[0] not in inserted}
        if not keys:
            break
        owners, names = zip(*keys, strict=True)
        ttl = key_ttl if attempt < KEY_ROUNDS - 1 else None  # the last look takes any holder
        earlier = await conn.fetch(EXISTING, list(owners), list(names), ttl)
        existing |= {(r["owner"], r["idempotency_key"]): TaskRecord(**dict(r)) for r in earlier}
        # keys released just now (expired), or whose holder was deleted meanwhile: again
        todo = [r for r in todo if r[0] not in inserted and (r[1], r[7]) not in existing]
        if not todo:
            break
    else:
        raise RuntimeError(f"idempotency keys without a task after {KEY_ROUNDS} inserts")
    tasks = [[inserted.get(r[0]) or existing[(r[1], r[7])] for r in unit] for unit in rows]
    return tasks, events


async def _insert_rows(
    conn: asyncpg.Connection,
    rows: list[tuple[Any, ...]],
    now: datetime | None,
    inserted: dict[uuid.UUID, TaskRecord],
    events: list[Event],
    *,
    refusable: bool,
) -> None:
    """Run INSERT_TASKS for `rows` (`_row`s), adding the tasks it created and their events.
    `refusable`: nothing was written before it, so its failure is `Refused`."""
    columns = [list(column) for column in zip(*rows, strict=True)]
    try:
        found = await conn.fetch(INSERT_TASKS, *columns, now)
    except (asyncpg.PostgresError, ValueError) as exc:
        if not refusable:
            raise
        raise Refused(str(exc)) from exc
    for r in found:
        inserted[r["id"]] = TaskRecord(**{c: r[c] for c in TASK_COLUMNS})
        events.append(
            Event(
                id=r["e_id"],
                task_id=r["id"],
                seq=1,
                xid=r["e_xid"],
                owner=r["owner"],
                kind=EventKind.STATUS,
                at=r["e_at"],
                data=r["e_data"],
            )
        )


def _row(s: Submission, owner: str, now: datetime | None, actor: str | None) -> tuple[Any, ...]:
    """INSERT_TASKS's values for one submission (one element of each array)."""
    start, due = None, None
    if now is not None:
        start = now + timedelta(seconds=s.delay_seconds) if s.delay_seconds else s.scheduled_for
        due = start if start is not None and start > now else None  # waits in PostgreSQL
    return (
        uuid.uuid4(),
        owner,
        s.type,
        json_text(s.input),
        s.priority,
        s.max_retries,
        s.timeout_seconds,
        s.idempotency_key,
        json_text(list(s.labels)),
        tracing.traceparent(),
        start,
        due,
        s.queue,
        s.concurrency_key,
        s.concurrency_limit,
        s.schedule_id,
        s.workflow_id,
        s.step_key,
        s.waiting,
        s.deadline,
        s.rate_limit,
        s.parent_id,
        s.detached,
        s.webhook_url,
        s.key_id,
        actor,  # who submitted it (JSON text): its QUEUED event's actor
    )
