"""Execution rate limits on a real stack: a user's task type with RATE_LIMIT = "10/second"
(its module in a package of theirs) run by two `taskrunner worker` processes, and
options.rateLimit on a built-in type. Starts, as PostgreSQL records them (started_at), are
never more than the limit in any period; a task over the limit waits QUEUED (one attempt
each in the end) and starts when a token frees; the workers do not poll in a loop
meanwhile (the claim script's calls are counted in Redis' commandstats). arq's own CLI
Worker holds the rate too (the job takes its token)."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from redis.asyncio import Redis
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner.config import Settings
from tests.support.environment import process_env, repo_root, task_package
from tests.support.processes import api_process, worker_process
from tests.support.stack import Stack
from tests.support.tasks import BATCH
from tests.support.waiting import eventually

LIMITED_TASK = '''
"""A no-op whose starts are limited to 10 a second across all workers."""

from pydantic import BaseModel

NAME = "limited"
RATE_LIMIT = "10/second"


class Input(BaseModel):
    n: int = 0


async def run(ctx, input: Input) -> dict:
    return {"n": input.n}
'''


async def rows(engine: AsyncEngine, ids: list[str]) -> list[tuple[str, int, datetime | None]]:
    async with engine.connect() as conn:
        found = await conn.execute(
            sa.text(
                "SELECT status::text, attempts, started_at FROM task WHERE id = ANY(:ids)"
            ).bindparams(sa.bindparam("ids", type_=ARRAY(UUID(as_uuid=False)))),
            {"ids": ids},
        )
        return [(r[0], r[1], r[2]) for r in found.all()]


def assert_at_most(starts: list[datetime], amount: int, period: float) -> None:
    """No `amount` + 1 starts in any `period` seconds: start i and start i + amount are at
    least `period` apart."""
    starts = sorted(starts)
    for first, later in zip(starts, starts[amount:], strict=False):
        gap = (later - first).total_seconds()
        assert gap >= period, f"{amount + 1} starts within {gap:.3f}s: {starts}"


async def claim_calls(redis: Redis) -> int:
    """How many scripts Redis has run by their SHA1 (each worker poll is one EVALSHA)."""
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_a_type_s_rate_limit_holds_across_two_workers(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    extra = task_package(tmp_path, "my_limited", {"limited": LIMITED_TASK})
    redis = Redis.from_url(settings.require_redis_url())
    async with (
        worker_process(settings, tmp_path / "worker-1.log", **extra),
        worker_process(settings, tmp_path / "worker-2.log", **extra),
        api_process(settings, tmp_path / "api.log", **extra) as url,
    ):
        stack = await Stack.keyed(url, settings)

        async def polling() -> bool:
            """the workers poll the queue"""
            return await claim_calls(redis) >= 2

        await eventually(polling, within=30)
        calls_before = await claim_calls(redis)
        submitted = time.monotonic()
        tasks = [{"task": {"limited": {"n": i}}} for i in range(30)]
        ids = [t["id"] for t in (await stack.execute(BATCH, t=tasks))["submitTasks"]]

        async def all_ended() -> bool:
            """all 30 tasks ended"""
            return all(s in ("SUCCEEDED", "FAILED") for s, _, _ in await rows(engine, ids))

        await eventually(all_ended, within=30)
        elapsed = time.monotonic() - submitted
        polls = await claim_calls(redis) - calls_before
    await redis.aclose()
    found = await rows(engine, ids)
    assert [(s, a) for s, a, _ in found] == [("SUCCEEDED", 1)] * 30
    starts = [s for _, _, s in found if s is not None]
    assert_at_most(starts, 10, 1.0)
    span = (max(starts) - min(starts)).total_seconds()
    assert 2.0 <= span <= 6.0, span  # three tokens' worth: ~2.5 s with the margin
    # no busy loop: a few polls per freed token and per ended job, not thousands
    assert polls <= 150, (polls, elapsed)


async def test_options_rate_limit_holds_a_built_in_type(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    async with (
        worker_process(settings, tmp_path / "worker.log"),
        api_process(settings, tmp_path / "api.log") as url,
    ):
        stack = await Stack.keyed(url, settings)
        options = {"rateLimit": "4/second"}
        tasks = [{"task": {"echo": {"message": f"m{i}"}}, "options": options} for i in range(12)]
        ids = [t["id"] for t in (await stack.execute(BATCH, t=tasks))["submitTasks"]]
        # an unrated task submitted after them is not held behind them
        plain = (await stack.execute(BATCH, t=[{"task": {"echo": {"message": "free"}}}]))[
            "submitTasks"
        ][0]["id"]

        async def all_ended() -> bool:
            """all 13 tasks ended"""
            found = await rows(engine, [*ids, plain])
            return all(s in ("SUCCEEDED", "FAILED") for s, _, _ in found)

        await eventually(all_ended, within=30)
    found = await rows(engine, ids)
    assert [(s, a) for s, a, _ in found] == [("SUCCEEDED", 1)] * 12
    starts = sorted(s for _, _, s in found if s is not None)
    assert_at_most(starts, 4, 1.0)
    (_, _, plain_start), *_ = await rows(engine, [plain])
    assert plain_start is not None and plain_start < starts[-1]


async def test_the_arq_cli_worker_holds_the_rate_too(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    """arq's own Worker has no claim script: the job takes its token, and without one goes
    back to the queue until the token frees (no attempt used)."""
    arq = Path(sys.executable).parent / "arq"
    with (tmp_path / "arq.log").open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            str(arq),
            "workers.settings.WorkerSettings",
            cwd=repo_root(),
            env=process_env(settings),
            stderr=log,
        )
        try:
            async with api_process(settings, tmp_path / "api.log") as url:
                stack = await Stack.keyed(url, settings)
                options = {"rateLimit": "3/second"}
                tasks = [
                    {"task": {"echo": {"message": f"m{i}"}}, "options": options} for i in range(9)
                ]
                ids = [t["id"] for t in (await stack.execute(BATCH, t=tasks))["submitTasks"]]

                async def all_ended() -> bool:
                    """all 9 tasks ended"""
                    found = await rows(engine, ids)
                    return all(s in ("SUCCEEDED", "FAILED") for s, _, _ in found)

                await eventually(all_ended, within=30)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
    found = await rows(engine, ids)
    assert [(s, a) for s, a, _ in found] == [("SUCCEEDED", 1)] * 9
    assert_at_most([s for _, _, s in found if s is not None], 3, 1.0)
