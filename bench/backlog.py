"""How fast a worker drains a backlog larger than its slots: N short `sleep` tasks queued
before one worker with S slots starts; its idle poll (30 s) never fires, so every batch after
the first is claimed as the worker's jobs end (workers.settings.TaskWorker).

    .venv/bin/python bench/backlog.py -n 300 --slots 10 --sleep 0.01

Starts its own embedded PostgreSQL and Redis in a temporary directory, migrates, submits
the tasks (taskrunner.submissions.submit, no api), then runs the worker in this process until
every task SUCCEEDED. drain_seconds runs from the first task's start to the last one's end
(both PostgreSQL's clock). Prints exactly one JSON document on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from common import log

from taskrunner import actors, queue
from taskrunner.config import load_settings
from taskrunner.db import create_engine, migrate
from taskrunner.embedded import EmbeddedPostgres, EmbeddedRedis
from taskrunner.logs import configure_logging
from taskrunner.submissions import Submission, submit
from workers.settings import task_worker

IDLE_POLL_SECONDS = 30.0
BATCH = 100  # submissions per submit() call


async def drain(
    database_url: str, redis_url: str, n: int, slots: int, sleep: float
) -> dict[str, Any]:
    settings = load_settings(
        database_url=database_url,
        redis_url=redis_url,
        tasks_per_minute=0,
        worker_metrics_port=0,
        worker_idle_poll_seconds=IDLE_POLL_SECONDS,
        _env_file=None,
    )
    engine = create_engine(database_url, pool_size=2)
    pool = await queue.connect(redis_url, settings.queue_name)
    try:
        work = [Submission("sleep", {"seconds": sleep}, 60) for _ in range(n)]
        for start in range(0, n, BATCH):
            await submit(
                engine=engine,
                redis=pool,
                pool=pool,
                owner="bench",
                submissions=work[start : start + BATCH],
                actor=actors.key("bench", "bench"),
            )
        log(f"[backlog] {n} tasks queued; one worker with {slots} slots starts")
        worker = task_worker(
            settings, handle_signals=False, max_jobs=slots, idle_poll_seconds=IDLE_POLL_SECONDS
        )
        running = asyncio.create_task(worker.async_run())
        began = time.monotonic()
        try:
            while True:
                async with engine.connect() as conn:
                    done = await conn.scalar(
                        sa.text("SELECT count(*) FROM task WHERE status = 'SUCCEEDED'")
                    )
                if done == n:
                    break
                if time.monotonic() - began > IDLE_POLL_SECONDS:
                    raise RuntimeError(
                        f"{done} of {n} after {IDLE_POLL_SECONDS} s: it waited for a poll"
                    )
                await asyncio.sleep(0.05)
        finally:
            worker.handle_sig(signal.SIGUSR1)
            await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
            worker.tasks.clear()
            await worker.close()
            with contextlib.suppress(asyncio.CancelledError):
                await running
        async with engine.connect() as conn:
            seconds = await conn.scalar(
                sa.text("SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM task")
            )
    finally:
        await pool.aclose()
        await engine.dispose()
    drain_seconds = float(seconds)
    return {
        "scenario": "backlog",
        "tasks": n,
        "slots": slots,
        "task_sleep_seconds": sleep,
        "drain_seconds": round(drain_seconds, 3),
        "tasks_per_s": round(n / drain_seconds, 1),
        # what the slots could do if a claim cost nothing: the rest is claiming and recording
        "ideal_seconds": round(n / slots * sleep, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("-n", type=int, default=300, help="tasks in the backlog")
    parser.add_argument("--slots", type=int, default=10, help="the worker's max_jobs")
    parser.add_argument("--sleep", type=float, default=0.01, help="each task's seconds")
    args = parser.parse_args()
    configure_logging("WARNING")  # the worker's task_* lines would drown the progress
    with tempfile.TemporaryDirectory(prefix="bench-backlog-") as tmp:
        postgres = EmbeddedPostgres(Path(tmp) / "postgres")
        redis = EmbeddedRedis(Path(tmp) / "redis")
        try:
            database_url = postgres.start()
            redis_url = redis.start()
            migrate(database_url)
            result = asyncio.run(drain(database_url, redis_url, args.n, args.slots, args.sleep))
        finally:
            redis.stop()
            postgres.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
