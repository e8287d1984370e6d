"""Fair sharing on a real stack: owner A floods the queue with 10,000 no-op tasks
(submitTasks of 1,000, MAX_BATCH_SIZE raised), owner B (another API key) submits 10 a
second later, while A's backlog is still thousands deep; B's tasks start within 1 s of
their submission, not after A's backlog. Without fair sharing they would wait for all of
A's tasks queued before them (seconds, at this machine's ~1,000 tasks/s)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner.config import Settings
from tests.support.processes import api_process, worker_process
from tests.support.stack import Stack, make_key
from tests.support.tasks import BATCH
from tests.support.waiting import eventually

FLOOD, BATCH_SIZE, IN_FLIGHT = 10_000, 1_000, 4

STARTS = sa.text(
    "SELECT status::text, extract(epoch FROM started_at - created_at) FROM task "
    "WHERE id = ANY(:ids)"
).bindparams(sa.bindparam("ids", type_=ARRAY(UUID(as_uuid=False))))


async def queued_of(engine: AsyncEngine, owner: str) -> int:
    async with engine.connect() as conn:
        found = await conn.execute(
            sa.text("SELECT count(*) FROM task WHERE owner = :o AND status = 'QUEUED'"),
            {"o": owner},
        )
        return int(found.scalar_one())


async def test_another_owner_s_tasks_start_at_once_under_a_flood(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    began = time.monotonic()
    async with (
        worker_process(settings, tmp_path / "worker.log"),
        api_process(settings, tmp_path / "api.log", MAX_BATCH_SIZE=str(BATCH_SIZE)) as url,
    ):
        a = await Stack.keyed(url, settings, owner="owner-a")
        b = a.as_key(await make_key(settings, "owner-b"))
        sem = asyncio.Semaphore(IN_FLIGHT)

        async def flood(n: int) -> None:
            tasks = [{"task": {"echo": {"message": f"a{n}-{i}"}}} for i in range(BATCH_SIZE)]
            async with sem:
                await a.execute(BATCH, t=tasks)

        await asyncio.gather(*(flood(n) for n in range(FLOOD // BATCH_SIZE)))
        await asyncio.sleep(1.0)  # "a second later"
        backlog = await queued_of(engine, "owner-a")
        mine = [{"task": {"echo": {"message": f"b{i}"}}} for i in range(10)]
        ids = [t["id"] for t in (await b.execute(BATCH, t=mine))["submitTasks"]]
        found: list[tuple[str, float | None]] = []

        async def b_ended() -> bool:
            """B's 10 tasks ended"""
            async with engine.connect() as conn:
                found[:] = [(r[0], r[1]) for r in (await conn.execute(STARTS, {"ids": ids}))]
            return all(s == "SUCCEEDED" for s, _ in found)

        await eventually(b_ended, within=30)

        async def a_drained() -> bool:
            """A's flood drained"""
            return await queued_of(engine, "owner-a") == 0

        await eventually(a_drained, within=120)
    # the premise: B came while A still had a deep backlog (else this proves nothing)
    assert backlog >= 1000, f"A's backlog was only {backlog} when B submitted"
    waits = sorted(float(w) for _, w in found if w is not None)
    assert len(waits) == 10 and waits[-1] <= 1.0, (waits, backlog)
    assert time.monotonic() - began < 180
