"""cancelTask and retryTask (and cancelTasks, retryTasks: the same for every task a filter
matches): a client's changes to a task it submitted, each a conditional
transition (transitions.py) recorded by the journal, then the queue and the workers told."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence

import sqlalchemy as sa
from arq import ArqRedis
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import actors, journal, queue, transitions
from taskrunner.actors import Actor
from taskrunner.errors import Conflict, LimitExceeded
from taskrunner.events import CANCEL_CHANNEL, cancel_message
from taskrunner.models import TaskRecord
from taskrunner.queries import TaskCriteria, matching_tasks, require
from taskrunner.states import TERMINAL, TaskStatus

# A test seam: when set, `cancel` awaits it between reading the task and writing the
# cancellation, so a test can start the task in that window (tests/workers/test_cancel_race.py).
before_cancel_write: Callable[[uuid.UUID, TaskStatus], Awaitable[None]] | None = None


async def cancel(
    *,
    engine: AsyncEngine,
    redis: Redis,
    pool: ArqRedis,
    task_id: uuid.UUID,
    owner: str | None,
    actor: Actor,
) -> TaskRecord:
    """QUEUED: CANCELLED at once, and it never runs. RUNNING: flag it and tell the workers;
    the one running it cancels the coroutine, which ends CANCELLED. Finished: CONFLICT.
    Its unfinished subtasks are cancelled with it, except detached ones (cancel_children).

    The write is conditional on the status read: a task a worker started after the read
    is not CANCELLED under its running body (CANCEL_QUEUED is QUEUED-only); it is read
    again and cancelled as a running task."""
    for _ in range(journal.MAX_TRANSACTION_RUNS):
        task = await require(engine=engine, task_id=task_id, owner=owner)
        status = TaskStatus(task.status)
        if status in TERMINAL:
            raise Conflict(
                f"task {task_id} is already {status.value}; only QUEUED or RUNNING tasks can be "
                "cancelled (retryTask runs a finished task again)"
            )
        if status is TaskStatus.RUNNING and task.cancel_requested:
            await redis.publish(CANCEL_CHANNEL, cancel_message(task_id, task.attempts))
            return task
        if before_cancel_write is not None:
            await before_cancel_write(task_id, status)
        if status is TaskStatus.QUEUED:
            change = transitions.cancelled_while_queued(task_id)
        else:  # the attempt read: the cancel message names that one
            change = transitions.cancel_requested(task_id, task.attempts)
        outcome = await journal.apply_one(engine, redis, actors.recorded(change, actor))
        if outcome.accepted:
            if status is TaskStatus.QUEUED:
                await queue.remove(pool, task_id, task.queue)
            else:
                await redis.publish(CANCEL_CHANNEL, cancel_message(task_id, task.attempts))
            await cancel_children(
                engine=engine, redis=redis, pool=pool, parent_ids=[task_id], actor=actor
            )
            return await require(engine=engine, task_id=task_id, owner=owner)
    raise Conflict(f"task {task_id} kept changing state; try cancelTask again")


async def retry(
    *,
    engine: AsyncEngine,
    redis: Redis,
    pool: ArqRedis,
    task_id: uuid.UUID,
    owner: str | None,
    actor: Actor,
) -> TaskRecord:
    """Run a FAILED or CANCELLED task again, as a new attempt (its history stays). A
    workflow's step is run again by retryWorkflow, which runs its dependents after it."""
    task = await require(engine=engine, task_id=task_id, owner=owner)
    if task.workflow_id is not None:
        raise Conflict(
            f"task {task_id} is step {task.step_key!r} of workflow {task.workflow_id}; run it "
            f'again with retryWorkflow(id: "{task.workflow_id}"), which also runs the steps '
            "that depend on it"
        )
    change = actors.recorded(transitions.retried(task_id), actor)
    outcome = await journal.apply_one(engine, redis, change)
    if not outcome.accepted:
        found = outcome.found.value if outcome.found else "gone"
        raise Conflict(f"task {task_id} is {found}; only FAILED or CANCELLED tasks can be retried")
    await queue.enqueue(pool, [queue.job_of(task)])
    return await require(engine=engine, task_id=task_id, owner=owner)


# --- bulk actions: cancelTasks and retryTasks -----------------------------------------


async def _bulk(
    engine: AsyncEngine,
    owner: str | None,
    filter: TaskCriteria,
    statuses: tuple[TaskStatus, ...],
    most: int,
    action: str,
    steps: bool = True,
) -> list[TaskRecord]:
    """The tasks a bulk action takes: at most `most`, or LIMIT_EXCEEDED (nothing done)."""
    wanted = tuple(s for s in statuses if not filter.status or s in filter.status)
    if not wanted:
        return []
    tasks = await matching_tasks(
        engine=engine, owner=owner, filter=filter, statuses=wanted, most=most + 1, steps=steps
    )
    if len(tasks) > most:
        raise LimitExceeded(
            f"filter: more than MAX_BULK_ACTION ({most}) tasks match; {action} acts on at "
            "most that many per call: narrow the filter (status, type, label, createdAfter, "
            "createdBefore) and call it again",
            field="filter",
        )
    return tasks


async def cancel_many(
    *,
    engine: AsyncEngine,
    redis: Redis,
    pool: ArqRedis,
    owner: str | None,
    filter: TaskCriteria,
    most: int,
    actor: Actor,
) -> int:
    """cancelTask for each matching QUEUED or RUNNING task, at most `most` (else
    LIMIT_EXCEEDED, nothing done); returns how many were cancelled (or, running, asked to
    stop). A task that moved on meanwhile (finished, or started: then it is asked to stop
    as a running one in a second round) is counted only if the cancel took."""
    tasks = await _bulk(
        engine, owner, filter, (TaskStatus.QUEUED, TaskStatus.RUNNING), most, "cancelTasks"
    )
    cancelled = await _cancel_all(engine, redis, pool, tasks, actor)
    await cancel_children(engine=engine, redis=redis, pool=pool, parent_ids=cancelled, actor=actor)
    return len(cancelled)


async def _cancel_all(
    engine: AsyncEngine, redis: Redis, pool: ArqRedis, tasks: list[TaskRecord], actor: Actor
) -> list[uuid.UUID]:
    """cancelTask for each of `tasks` (QUEUED or RUNNING as read); the ids of those whose
    cancel took."""
    done: list[uuid.UUID] = []
    for _ in range(2):  # a task started between the read and the write: once more, running
        queued = [t for t in tasks if t.status == TaskStatus.QUEUED.value]
        running = [t for t in tasks if t.status == TaskStatus.RUNNING.value]
        changes = [transitions.cancelled_while_queued(t.id) for t in queued]
        changes += [transitions.cancel_requested(t.id, t.attempts) for t in running]
        outcomes = await journal.apply(engine, redis, actors.all_recorded(changes, actor))
        by_id = {t.id: t for t in tasks}
        again: list[uuid.UUID] = []
        removed: list[tuple[uuid.UUID, str]] = []
        async with pool.pipeline(transaction=False) as pipe:
            for outcome in outcomes:
                task = by_id[outcome.change.task_id]
                if outcome.accepted:
                    done.append(task.id)
                    if outcome.change.to is TaskStatus.CANCELLED:
                        removed.append((task.id, task.queue))
                    else:
                        pipe.publish(CANCEL_CHANNEL, cancel_message(task.id, task.attempts))
                elif outcome.found is TaskStatus.RUNNING:
                    again.append(task.id)
            await pipe.execute()
        await queue.remove_many(pool, removed)  # as cancelTask: its job is dropped
        if not again:
            break
        tasks = await matching_tasks(
            engine=engine,
            owner=None,
            filter=TaskCriteria(),
            statuses=(TaskStatus.RUNNING,),
            most=len(again),
            ids=again,
        )
    return done


# A parent's descendants through children not submitted detached, QUEUED or RUNNING (a
# finished child's own children included: they were submitted under the same parent).
DESCENDANTS = sa.text(
    """
WITH RECURSIVE d(id) AS (
  SELECT id FROM task WHERE parent_id = ANY(:ids) AND NOT detached
  UNION
  SELECT t.id FROM task t JOIN d ON t.parent_id = d.id WHERE NOT t.detached
)
SELECT t.* FROM task t JOIN d ON d.id = t.id WHERE t.status IN ('QUEUED', 'RUNNING')
LIMIT :most"""
)
MAX_CASCADE = 10_000  # descendants cancelled with one parent (more: the rest stay)


async def cancel_children(
    *,
    engine: AsyncEngine,
    redis: Redis,
    pool: ArqRedis,
    parent_ids: Sequence[uuid.UUID],
    actor: Actor,
) -> int:
    """A cancelled task's subtasks (ctx.submit) go with it: every unfinished descendant not
    submitted `detached` is cancelled as cancelTask would (QUEUED: at once; RUNNING: its
    worker stops it), by `actor` (the parent's canceller). Returns how many."""
    if not parent_ids:
        return 0
    async with engine.connect() as conn:
        rows = (
            await conn.execute(DESCENDANTS, {"ids": list(parent_ids), "most": MAX_CASCADE})
        ).mappings()
        tasks = [TaskRecord(**dict(r)) for r in rows]
    return len(await _cancel_all(engine, redis, pool, tasks, actor))


async def retry_many(
    *,
    engine: AsyncEngine,
    redis: Redis,
    pool: ArqRedis,
    owner: str | None,
    filter: TaskCriteria,
    most: int,
    actor: Actor,
) -> int:
    """retryTask for each matching FAILED or CANCELLED task, at most `most` (else
    LIMIT_EXCEEDED, nothing done); returns how many run again. Workflows' steps are left
    out: retryWorkflow runs them again, with their dependents."""
    tasks = await _bulk(
        engine,
        owner,
        filter,
        (TaskStatus.FAILED, TaskStatus.CANCELLED),
        most,
        "retryTasks",
        steps=False,
    )
    changes = [actors.recorded(transitions.retried(t.id), actor) for t in tasks]
    outcomes = await journal.apply(engine, redis, changes)
    again = [queue.job_of(t) for t, o in zip(tasks, outcomes, strict=True) if o.accepted]
    await queue.enqueue(pool, again)
    return len(again)
