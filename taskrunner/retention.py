"""Retention: finished tasks with their events and artifacts, and finished workflows with
their steps, deleted TASK_RETENTION_DAYS after they finished. In batches, each a short
transaction, with a pause between them, so that live traffic keeps the database.

Kept whatever their age, so that nothing still live loses what it refers to:
- a workflow's steps, until the whole workflow can go: it finished before the cutoff, and
  so did every one of its steps (retryWorkflow can re-run any of them until then);
- a task with an unfinished child (ctx.submit), and a task whose parent is unfinished (the
  parent may still `ctx.wait` for it);
- the last task each schedule fired (`schedule.last_task_id`, which overlap SKIP reads).
  Older ticks go: a schedule's `next_run_at` only moves forward, and `_next_after_now`
  starts from the later of now and the last tick still kept, so no tick fires again.

A batch (`_purge_tasks`, `_purge_workflows`): (1) without locks, read the ids of up to
`batch` purgeable tasks, oldest finish first (ix_task_finished; workflows by
ix_workflow_finished), and their artifacts; (2) delete those artifacts' bytes from the
store, as `artifacts.records.delete_expired` does; (3) in one transaction, lock the tasks
that still qualify (FOR UPDATE SKIP LOCKED: one being retried or written is left for a
later round), then delete the artifact rows whose bytes went (also those of a task that no
longer qualifies: a row never outlives its bytes), the tasks' events and the tasks. A crash
between (2) and (3) leaves rows whose bytes are gone; the next round deletes them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import metrics
from taskrunner.artifacts.storage import ArtifactStore
from taskrunner.connections import connection, transaction

BATCH = 1000  # tasks (a workflow's steps counted) deleted in one transaction
# Between batches, so that live statements get the database too: at least PAUSE_SECONDS,
# and PACE times as long as the batch took (a busy database, slower batches, longer pauses:
# with 3.0 the purge holds a connection at most a quarter of the time). bench/purge.py on
# 2 cores, 200 submissions/s: a fixed 0.05 s pause (about half the time) took start p99 to
# 1.3 and 2.9 x its value without the purge; PACE 1.0 2.2 x; PACE 3.0 1.0 and 1.16 x,
# deleting about 4,800 tasks (14,500 events) a second meanwhile.
PAUSE_SECONDS = 0.05
PACE = 3.0
STORE_DELETES = 16  # artifact deletions in flight at once

# Of the task `t`: finished before the cutoff $1, nothing live refers to it, and no hook
# (workers.hooks) nor completion webhook (taskrunner.webhooks) is still due on it.
PURGEABLE = """(t.finished_at < $1 AND t.status IN ('SUCCEEDED', 'FAILED', 'CANCELLED')
  AND NOT EXISTS (SELECT 1 FROM task c
                  WHERE c.parent_id = t.id AND c.status IN ('QUEUED', 'RUNNING'))
  AND NOT EXISTS (SELECT 1 FROM task p
                  WHERE p.id = t.parent_id AND p.status IN ('QUEUED', 'RUNNING'))
  AND t.id NOT IN (SELECT last_task_id FROM schedule WHERE last_task_id IS NOT NULL)
  AND t.hooks_due IS NULL
  AND NOT EXISTS (SELECT 1 FROM webhook_delivery d
                  WHERE d.task_id = t.id AND d.status = 'PENDING'))"""
# ... and it has no artifact but those whose bytes this batch deleted ($3)
NO_OTHER_ARTIFACT = (
    "NOT EXISTS (SELECT 1 FROM artifact a WHERE a.task_id = t.id AND a.id <> ALL($3::uuid[]))"
)

TASKS = f"""
SELECT t.id, t.finished_at FROM task t
WHERE t.workflow_id IS NULL AND t.finished_at >= $3 AND {PURGEABLE}
ORDER BY t.finished_at LIMIT $2"""
LOCK_TASKS = f"""
SELECT t.id FROM task t
WHERE t.id = ANY($2::uuid[]) AND t.workflow_id IS NULL AND {PURGEABLE} AND {NO_OTHER_ARTIFACT}
FOR UPDATE OF t SKIP LOCKED"""

WORKFLOWS = f"""
SELECT w.id, w.step_count, w.finished_at FROM workflow w
WHERE w.finished_at >= $3 AND w.finished_at < $1 AND w.status <> 'RUNNING'
  AND NOT EXISTS (SELECT 1 FROM task t
                  WHERE t.workflow_id = w.id AND NOT coalesce({PURGEABLE}, false))
ORDER BY w.finished_at LIMIT $2"""
STEPS = "SELECT id, workflow_id FROM task WHERE workflow_id = ANY($1::uuid[])"
LOCK_WORKFLOWS = """
SELECT id FROM workflow
WHERE id = ANY($2::uuid[]) AND finished_at < $1 AND status <> 'RUNNING'
FOR UPDATE SKIP LOCKED"""
LOCK_STEPS = f"""
SELECT t.id, t.workflow_id, coalesce({PURGEABLE} AND {NO_OTHER_ARTIFACT}, false) AS ok
FROM task t WHERE t.workflow_id = ANY($2::uuid[])
FOR UPDATE OF t SKIP LOCKED"""

ARTIFACTS = "SELECT id, key FROM artifact WHERE task_id = ANY($1::uuid[])"
DELETE_ARTIFACTS = "DELETE FROM artifact WHERE id = ANY($1::uuid[])"
DELETE_EVENTS = "DELETE FROM task_event WHERE task_id = ANY($1::uuid[])"
DELETE_STEPS = "DELETE FROM workflow_step WHERE workflow_id = ANY($1::uuid[])"
DELETE_TASKS = "DELETE FROM task WHERE id = ANY($1::uuid[])"
DELETE_WORKFLOWS = "DELETE FROM workflow WHERE id = ANY($1::uuid[])"


@dataclass
class Purged:
    """What a purge deleted; `batches`: the tasks (steps included) each batch deleted."""

    tasks: int = 0
    workflows: int = 0
    events: int = 0
    artifacts: int = 0
    batches: list[int] = field(default_factory=list)

    def add(self, tasks: int, workflows: int, events: int, artifacts: int) -> None:
        self.tasks += tasks
        self.workflows += workflows
        self.events += events
        self.artifacts += artifacts
        self.batches.append(tasks)
        for kind, n in (
            ("tasks", tasks),
            ("workflows", workflows),
            ("events", events),
            ("artifacts", artifacts),
        ):
            metrics.RETENTION_PURGED.labels(kind).inc(n)


async def purge(
    engine: AsyncEngine,
    store: ArtifactStore,
    older_than: timedelta,
    *,
    batch: int = BATCH,
    pause: float = PAUSE_SECONDS,
    pace: float = PACE,
    until: float | None = None,
) -> Purged:
    """Delete what finished more than `older_than` ago (the cutoff is taken once, on the
    database's clock): first finished workflows with their steps, then other tasks; each
    with its events and artifacts (bytes first). Between batches it pauses (`pause`, or
    `pace` times the batch's time if longer). Stops when nothing is left or, between
    batches, at `until` (time.monotonic()); the next round goes on from there."""
    if batch < 1 or pause < 0 or pace < 0:
        raise ValueError(f"batch must be >= 1 and pause, pace >= 0: {batch}, {pause}, {pace}")
    async with connection(engine) as conn:
        cutoff: datetime = await conn.fetchval(
            "SELECT clock_timestamp() - $1::interval", older_than
        )
    done = Purged()
    for phase in (_purge_workflows, _purge_tasks):
        after = datetime.min.replace(tzinfo=cutoff.tzinfo)
        while until is None or time.monotonic() < until:
            deleted, started = done.tasks, time.monotonic()
            more, last = await phase(engine, store, cutoff, batch, after, done)
            stuck = last == after and done.tasks == deleted  # all it found is held
            if not more or stuck:
                break
            after = last  # those finished before it are deleted, or held: not read again
            await asyncio.sleep(max(pause, (time.monotonic() - started) * pace))
    return done


async def _purge_tasks(
    engine: AsyncEngine,
    store: ArtifactStore,
    cutoff: datetime,
    batch: int,
    after: datetime,
    done: Purged,
) -> tuple[bool, datetime]:
    """One batch of the tasks outside workflows that finished at or after `after`: whether
    there may be more, and the finish of the last one read."""
    async with connection(engine) as conn:
        rows = await conn.fetch(TASKS, cutoff, batch, after)
        if not rows:
            return False, after
        ids = [r["id"] for r in rows]
        artifacts = await conn.fetch(ARTIFACTS, ids)
    gone = await _delete_bytes(store, artifacts)
    async with transaction(engine) as conn:
        locked = [r["id"] for r in await conn.fetch(LOCK_TASKS, cutoff, ids, gone)]
        artifacts_deleted = await _count(conn, DELETE_ARTIFACTS, gone)
        events = await _count(conn, DELETE_EVENTS, locked)
        tasks = await _count(conn, DELETE_TASKS, locked)
    done.add(tasks, 0, events, artifacts_deleted)
    return len(rows) == batch, rows[-1]["finished_at"]


async def _purge_workflows(
    engine: AsyncEngine,
    store: ArtifactStore,
    cutoff: datetime,
    batch: int,
    after: datetime,
    done: Purged,
) -> tuple[bool, datetime]:
    """One batch of the finished workflows that finished at or after `after`, with their
    steps (at most `batch` steps, or one workflow): whether there may be more, and the
    finish of the last one taken."""
    async with connection(engine) as conn:
        rows = await conn.fetch(WORKFLOWS, cutoff, batch, after)
        chosen: list[uuid.UUID] = []
        last = after
        steps = 0
        for r in rows:
            if chosen and steps + r["step_count"] > batch:
                break
            chosen.append(r["id"])
            last = r["finished_at"]
            steps += r["step_count"]
        if not chosen:
            return False, after
        step_rows = await conn.fetch(STEPS, chosen)
        artifacts = await conn.fetch(ARTIFACTS, [r["id"] for r in step_rows])
    expected: dict[uuid.UUID, set[uuid.UUID]] = {w: set() for w in chosen}
    for r in step_rows:
        expected[r["workflow_id"]].add(r["id"])
    gone = await _delete_bytes(store, artifacts)
    async with transaction(engine) as conn:
        workflows = [r["id"] for r in await conn.fetch(LOCK_WORKFLOWS, cutoff, chosen)]
        ready: dict[uuid.UUID, set[uuid.UUID]] = {w: set() for w in workflows}
        blocked: set[uuid.UUID] = set()
        for r in await conn.fetch(LOCK_STEPS, cutoff, workflows, gone):
            if r["ok"]:
                ready[r["workflow_id"]].add(r["id"])
            else:
                blocked.add(r["workflow_id"])
        # a workflow goes whole or not at all: every step it had, each locked and purgeable
        whole = [w for w in workflows if w not in blocked and ready[w] == expected[w]]
        tasks = [t for w in whole for t in ready[w]]
        artifacts_deleted = await _count(conn, DELETE_ARTIFACTS, gone)
        events = await _count(conn, DELETE_EVENTS, tasks)
        await conn.execute(DELETE_STEPS, whole)
        deleted = await _count(conn, DELETE_TASKS, tasks)
        workflows_deleted = await _count(conn, DELETE_WORKFLOWS, whole)
    done.add(deleted, workflows_deleted, events, artifacts_deleted)
    return len(rows) > len(chosen) or len(rows) == batch, last


async def _delete_bytes(
    store: ArtifactStore, artifacts: Sequence[asyncpg.Record]
) -> list[uuid.UUID]:
    """Delete the artifacts' bytes, a few at once; the ids of those deleted."""
    limit = asyncio.Semaphore(STORE_DELETES)

    async def one(key: str) -> None:
        async with limit:
            await store.delete(key)

    await asyncio.gather(*(one(a["key"]) for a in artifacts))
    return [a["id"] for a in artifacts]


async def _count(conn: asyncpg.Connection, statement: str, ids: list[uuid.UUID]) -> int:
    """Run a DELETE over `ids`; how many rows it deleted."""
    if not ids:
        return 0
    status: str = await conn.execute(statement, ids)
    return int(status.rsplit(" ", 1)[-1])
