"""The task's log as an artifact: `task.log`, written by the runner before a final status.

A task.log counts towards its owner's stored bytes but is never refused for the quota.
"""

from __future__ import annotations

import logging
import uuid

import sqlalchemy as sa
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner.artifacts.records import add_artifact
from taskrunner.artifacts.storage import ArtifactStore
from taskrunner.events import EventKind
from taskrunner.models import event_table

log = logging.getLogger(__name__)


async def store_task_log(
    *,
    engine: AsyncEngine,
    redis: Redis,
    store: ArtifactStore,
    task_id: uuid.UUID,
    attempt: int,
    max_bytes: int,
) -> None:
    """Write the task's whole log so far (every attempt) to the store as `task.log`, before
    its final status (a task that logged nothing gets no file). Never raises: the outcome
    of the task matters more than its log file."""
    e = event_table.c
    query = (
        sa.select(e.at, e.data)
        .where(e.task_id == task_id, e.kind == EventKind.LOG.value)
        .order_by(e.seq)
    )
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        if not rows:
            return
        text = "".join(
            f"{r.at.isoformat()} {r.data.get('level', 'info').upper()} {r.data.get('line', '')}\n"
            for r in rows
        )
        await add_artifact(
            engine=engine,
            redis=redis,
            store=store,
            task_id=task_id,
            name="task.log",
            data=text.encode(),
            content_type="text/plain; charset=utf-8",
            max_bytes=max_bytes,
            is_log=True,
            expect_attempt=attempt,
        )
    except Exception:
        log.exception("could not store the log of task %s", task_id)
