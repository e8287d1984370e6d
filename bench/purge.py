"""Retention under load: purging 1,000,000 finished tasks while 200 submissions/s arrive.

Against a running stack (`bench/run.py --only purge` starts one; or `make dev` with
--database-url of its PostgreSQL):

1. fill: --rows tasks SUCCEEDED 30 days ago, each with --events-per-task events (QUEUED,
   RUNNING, SUCCEEDED), one INSERT ... SELECT each into the stack's own database, then
   VACUUM ANALYZE;
2. without the purge: bench/e2e.py --mode rate (--rate submitTask calls a second for
   --seconds), its created -> started percentiles;
3. with the purge: `taskrunner.retention.purge` (TASK_RETENTION_DAYS 7, the module's batch
   pause and pace unless --batch / --pause / --pace say otherwise) started in this process, the same
   e2e run while it deletes, then the purge left to finish;
4. one JSON document: both runs' created -> started p50/p95/p99 and the ratio of the p99s,
   what the purge deleted during the window and in all, and its rate (tasks/s, events/s).

The purge runs in this process, not in the worker that starts the tasks: the worker's event
loop only awaits its statements (a few per batch), the work is PostgreSQL's, which both share.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from taskrunner import retention  # noqa: E402
from taskrunner.artifacts.local import LocalStore  # noqa: E402
from taskrunner.db import create_engine  # noqa: E402

OWNER = "bench-purge"
FILL_TASKS = f"""
INSERT INTO task (id, owner, type, status, input, result, timeout_seconds, attempts,
                  event_seq, created_at, started_at, finished_at)
SELECT gen_random_uuid(), '{OWNER}', 'echo', 'SUCCEEDED', jsonb_build_object('i', i),
       '{{"ok": true}}'::jsonb, 60, 1, CAST(:events AS integer), at, at + interval '1 second',
       at + interval '2 seconds'
FROM (SELECT i, now() - interval '30 days' + i * interval '1 millisecond' AS at
      FROM generate_series(1, CAST(:rows AS integer)) AS i) s
"""
FILL_EVENTS = f"""
INSERT INTO task_event (task_id, seq, owner, kind, at, data)
SELECT t.id, e.seq, t.owner, 'status', t.created_at + (e.seq - 1) * interval '1 second',
       jsonb_build_object('status', e.status)
FROM task t
CROSS JOIN (SELECT seq, (ARRAY['QUEUED', 'RUNNING', 'SUCCEEDED'])[1 + (seq - 1) % 3] AS status
            FROM generate_series(1, CAST(:events AS integer)) AS seq) e
WHERE t.owner = '{OWNER}'
"""


def log(message: str) -> None:
    print(f"[purge] {message}", file=sys.stderr, flush=True)


async def fill(database_url: str, rows: int, events: int) -> dict[str, Any]:
    engine = create_engine(database_url, pool_size=1)
    try:
        start = time.perf_counter()
        async with engine.begin() as conn:
            await conn.execute(sa.text("SET LOCAL synchronous_commit = off"))
            await conn.execute(sa.text(FILL_TASKS), {"rows": rows, "events": events})
            log(f"{rows} tasks in {time.perf_counter() - start:.1f}s; their events")
            await conn.execute(sa.text(FILL_EVENTS), {"events": events})
        inserted = time.perf_counter() - start
        log(f"filled in {inserted:.1f}s; VACUUM ANALYZE")
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(sa.text("VACUUM (ANALYZE) task"))
            await conn.execute(sa.text("VACUUM (ANALYZE) task_event"))
        return {
            "tasks": rows,
            "events": rows * events,
            "insert_seconds": round(inserted, 1),
            "fill_seconds_incl_vacuum": round(time.perf_counter() - start, 1),
        }
    finally:
        await engine.dispose()


async def e2e(args: argparse.Namespace) -> dict[str, Any]:
    """bench/e2e.py --mode rate, in a process of its own (so the purge does not slow the
    client); the figures this benchmark reports."""
    command = [
        sys.executable,
        str(ROOT / "bench" / "e2e.py"),
        "--url",
        args.url,
        "--mode",
        "rate",
        "--rate",
        str(args.rate),
        "--duration",
        str(args.seconds),
    ]
    if args.api_key:
        command += ["--api-key", args.api_key]
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.PIPE, cwd=ROOT / "bench"
    )
    out, _ = await proc.communicate()
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    found: dict[str, Any] = json.loads(lines[-1]) if lines else {"error": "no JSON"}
    keys = (
        "n",
        "submit_errors",
        "achieved_submit_rate_per_s",
        "fell_behind_schedule",
        "backlog_growing",
        "created_to_started_ms",
        "submit_to_running_ms",
    )
    return {k: found.get(k) for k in keys} | {"exit_code": proc.returncode}


async def count(database_url: str) -> int:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            query = sa.text("SELECT count(*) FROM task WHERE owner = :o")
            return int(await conn.scalar(query, {"o": OWNER}) or 0)
    finally:
        await engine.dispose()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {
        "rate_per_s": args.rate,
        "window_seconds": args.seconds,
        "batch": args.batch,
        "pause_seconds": args.pause,
        "pace": args.pace,
    }
    report["fill"] = await fill(args.database_url, args.rows, args.events_per_task)
    log("without the purge")
    report["without_purge"] = await e2e(args)
    engine = create_engine(args.database_url, pool_size=2)
    store = LocalStore(Path(args.data_dir) / "artifacts")
    try:
        started = time.perf_counter()
        purging = asyncio.create_task(
            retention.purge(
                engine,
                store,
                timedelta(days=7),
                batch=args.batch,
                pause=args.pause,
                pace=args.pace,
            )
        )
        await asyncio.sleep(1.0)  # under way
        log("with the purge")
        report["with_purge"] = await e2e(args)
        window_end = time.perf_counter()
        left_then = await count(args.database_url)
        report["purge_running_throughout"] = not purging.done()
        done = await asyncio.wait_for(purging, args.purge_timeout)
        total = time.perf_counter() - started
    finally:
        await engine.dispose()
    in_window = args.rows - left_then
    report["purge"] = {
        "tasks": done.tasks,
        "events": done.events,
        "batches": len(done.batches),
        "largest_batch": max(done.batches, default=0),
        "seconds": round(total, 1),
        "tasks_per_s": round(done.tasks / total, 1),
        "events_per_s": round(done.events / total, 1),
        "tasks_by_end_of_window": in_window,
        "tasks_per_s_during_window": round(in_window / (window_end - started), 1),
    }
    before = (report["without_purge"].get("created_to_started_ms") or {}).get("p99")
    after = (report["with_purge"].get("created_to_started_ms") or {}).get("p99")
    if before and after:
        report["p99_ratio_with_to_without"] = round(after / before, 2)
        report["target_met"] = after < 2 * before
    return report


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000/graphql")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--database-url", required=True, help="the stack's PostgreSQL")
    parser.add_argument("--data-dir", default="data", help="the stack's DATA_DIR (artifacts)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="finished tasks to purge")
    parser.add_argument("--events-per-task", type=int, default=3)
    parser.add_argument("--rate", type=float, default=200.0, help="submitTask calls a second")
    parser.add_argument("--seconds", type=float, default=30.0, help="each measured window")
    parser.add_argument("--batch", type=int, default=retention.BATCH)
    parser.add_argument("--pause", type=float, default=retention.PAUSE_SECONDS)
    parser.add_argument("--pace", type=float, default=retention.PACE)
    parser.add_argument("--purge-timeout", type=float, default=1800.0)
    args = parser.parse_args()
    if args.rows < 1 or args.events_per_task < 1 or args.seconds <= 0 or args.rate <= 0:
        parser.error("--rows, --events-per-task, --seconds and --rate must be positive")
    report = asyncio.run(run(args))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
