"""Tasks in the test's PostgreSQL, written and read directly: a new task row without the
api, counts by status, and polling a query until it gives the expected value."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import actors, connections
from taskrunner.submissions import Submission, insert


async def new_task(
    engine: AsyncEngine,
    *,
    owner: str = "",
    type: str = "echo",
    input: dict[str, Any] | None = None,
) -> uuid.UUID:
    """A QUEUED task of `owner` (with its QUEUED event), committed and never enqueued: no
    worker takes it."""
    submission = Submission(type, input if input is not None else {"message": "x"}, 60)
    async with connections.transaction(engine) as conn:
        ((task,),), _ = await insert(conn, [(owner, [submission], actors.key(owner, owner))])
    return task.id


async def status_counts(engine: AsyncEngine) -> dict[str, int]:
    """{status: how many tasks have it}."""
    async with engine.connect() as conn:
        rows = await conn.execute(sa.text("SELECT status, count(*) FROM task GROUP BY status"))
        return {r[0]: r[1] for r in rows}


async def wait_for(engine: AsyncEngine, sql: str, expected: Any, within: float = 30) -> None:
    """Poll PostgreSQL until `sql` returns `expected`."""
    async with asyncio.timeout(within):
        while True:
            async with engine.connect() as conn:
                if await conn.scalar(sa.text(sql)) == expected:
                    return
            await asyncio.sleep(0.1)
