"""`tasks` list benchmark: latency of `tasks(first: 50)` over HTTP on a large task table,
and EXPLAIN (ANALYZE, BUFFERS) of the SQL `list_tasks` runs for the same cases.

    .venv/bin/python bench/list.py --rows 100000              # embedded servers, temp dir
    .venv/bin/python bench/list.py --database-url postgresql://... --redis-url redis://... \\
        --rows 1000000 [--keep]

Without --database-url/--redis-url it starts an embedded PostgreSQL and Redis in a temp dir
(removed afterwards) and migrates. With them the database must be migrated already, and the
task table is EMPTIED (TRUNCATE ... CASCADE: events and artifacts go too) and refilled with
--rows synthetic tasks by one INSERT ... SELECT FROM generate_series; the script refuses if
the table holds tasks it did not write, unless --wipe. --keep reuses the rows already there.

Data: 90% of the tasks belong to owner "bench", the rest to owner-01..owner-99; types
echo/sleep/sum; ~85% SUCCEEDED, 8% FAILED, 4% QUEUED, 2% RUNNING, 1% CANCELLED; 30% carry
one label l0..l19 (so "l7" is on ~1.5%); created_at spread over the last 30 days. No
task_event rows (listing does not read them).

Then it starts `python -m taskrunner api` on a free port, creates a key for owner "bench"
and times --requests sequential `tasks(first: 50)` calls per case (after --warmup ones).
Prints one JSON document on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import sqlalchemy as sa
from common import Client, GraphQLError, log, percentile
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import keys
from taskrunner.db import create_engine, migrate
from taskrunner.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from taskrunner.queries import TaskCriteria, list_tasks
from taskrunner.states import TaskStatus

OWNER = "bench"
MARK = "list-bench"  # input->>'bench' of every row this script writes
REPO = Path(__file__).resolve().parent.parent

FILL = """
INSERT INTO task (id, owner, type, status, input, result, error_code, error_message,
                  timeout_seconds, labels, created_at, started_at, finished_at,
                  worker_id, cancel_requested, attempts, event_seq)
SELECT gen_random_uuid(),
       CASE WHEN r_owner < 0.9 THEN 'bench'
            ELSE 'owner-' || lpad((1 + (i % 99))::text, 2, '0') END,
       (ARRAY['echo', 'sleep', 'sum'])[1 + floor(r_type * 3)::int],
       st,
       jsonb_build_object('bench', CAST(:mark AS text), 'i', i),
       CASE WHEN st = 'SUCCEEDED' THEN '{"ok": true}'::jsonb END,
       CASE WHEN st = 'FAILED' THEN 'TASK_ERROR' END,
       CASE WHEN st = 'FAILED' THEN 'synthetic failure' END,
       60,
       CASE WHEN r_label < 0.3 THEN ARRAY['l' || floor(r_label / 0.3 * 20)::int]
            ELSE '{}'::text[] END,
       created,
       CASE WHEN st <> 'QUEUED' THEN created + interval '1 second' END,
       CASE WHEN st IN ('SUCCEEDED', 'FAILED', 'CANCELLED') THEN created + interval '2 seconds'
       END,
       CASE WHEN st = 'RUNNING' THEN 'bench-worker' END,
       st = 'CANCELLED',
       CASE WHEN st = 'QUEUED' THEN 0 ELSE 1 END,
       CASE WHEN st = 'QUEUED' THEN 1 WHEN st = 'RUNNING' THEN 2 ELSE 3 END
FROM (
    SELECT i, r_owner, r_type, r_label,
           CASE WHEN r_status < 0.85 THEN 'SUCCEEDED' WHEN r_status < 0.93 THEN 'FAILED'
                WHEN r_status < 0.97 THEN 'QUEUED' WHEN r_status < 0.99 THEN 'RUNNING'
                ELSE 'CANCELLED' END AS st,
           now() - r_created * interval '30 days' AS created
    FROM (
        SELECT i, random() AS r_owner, random() AS r_type, random() AS r_label,
               random() AS r_status, random() AS r_created
        FROM generate_series(1, CAST(:rows AS integer)) AS i
    ) r
) s
"""

LIST = """query($first: Int!, $after: String, $filter: TaskFilter) {
  tasks(first: $first, after: $after, filter: $filter) {
    edges { cursor node { id type status labels createdAt finishedAt progress
                          error { code message } } }
    pageInfo { hasNextPage endCursor } } }"""


# The console's overview (issue 21): counts, per-minute buckets, percentiles, failures.
STATS = """query($since: DateTime, $bucket: Int!) {
  stats(since: $since, bucketSeconds: $bucket) {
    counts { status count }
    buckets { start succeeded failed cancelled queueWait { p50 p95 } runTime { p50 p95 } }
    queueWait { p50 p95 } runTime { p50 p95 } failuresByCode { code count } } }"""
# the console overview's three windows and their buckets
STATS_CASES = {
    "stats_last_hour_by_minute": (None, 60),
    "stats_last_6h_by_5min": (6, 300),
    "stats_last_day_by_15min": (24, 900),
}


async def time_stats(
    client: Client, hours: int | None, bucket: int, args: argparse.Namespace
) -> dict[str, Any]:
    """`stats` as the console asks for it, over the window's tasks of the whole table."""
    times: list[float] = []
    counted = 0
    for i in range(args.warmup + args.requests):
        since = None if hours is None else (datetime.now(UTC) - timedelta(hours=hours)).isoformat()
        start = time.perf_counter()
        data = await client.gql(STATS, since=since, bucket=bucket)
        elapsed = (time.perf_counter() - start) * 1000
        if i >= args.warmup:
            times.append(elapsed)
            counted = sum(c["count"] for c in data["stats"]["counts"])
    times.sort()
    return {
        "requests": len(times),
        "tasks_in_window": counted,
        **{p: percentile(times, q, 2) for p, q in (("p50", 50), ("p95", 95), ("p99", 99))},
        "max": round(times[-1], 2),
    }


@dataclass
class Case:
    name: str
    gql_filter: dict[str, Any] | None
    filter: TaskCriteria = field(default_factory=TaskCriteria)
    pages: int = 1  # > 1: follow endCursor this many pages, then start over


def cases(pages: int) -> list[Case]:
    since = datetime.now(UTC) - timedelta(hours=24)
    failed = TaskStatus.FAILED
    return [
        Case("no_filter", None),
        Case("status_failed", {"status": ["FAILED"]}, TaskCriteria(status=(failed,))),
        Case("type_sum", {"type": ["sum"]}, TaskCriteria(type=("sum",))),
        Case("label_l7", {"label": "l7"}, TaskCriteria(label="l7")),
        Case(
            "created_after_24h",
            {"createdAfter": since.isoformat()},
            TaskCriteria(created_after=since),
        ),
        Case(
            "status_failed_type_sum",
            {"status": ["FAILED"], "type": ["sum"]},
            TaskCriteria(status=(failed,), type=("sum",)),
        ),
        Case(f"paging_{pages}_pages", None, pages=pages),
    ]


@contextlib.contextmanager
def servers(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """The given URLs, or embedded PostgreSQL + Redis in a temp dir (migrated)."""
    if args.database_url and args.redis_url:
        yield args.database_url, args.redis_url
        return
    if args.database_url or args.redis_url:
        raise SystemExit("give both --database-url and --redis-url, or neither")
    with tempfile.TemporaryDirectory(prefix="bench-list-") as tmp:
        postgres = EmbeddedPostgres(Path(tmp) / "postgres")
        redis = EmbeddedRedis(Path(tmp) / "redis")
        try:
            log("starting embedded PostgreSQL and Redis")
            database_url = postgres.start()
            redis_url = redis.start()
            migrate(database_url)
            yield database_url, redis_url
        finally:
            redis.stop()
            postgres.stop()


async def fill(engine: AsyncEngine, args: argparse.Namespace) -> dict[str, Any]:
    async with engine.connect() as conn:
        existing = int(await conn.scalar(sa.text("SELECT count(*) FROM task")) or 0)
        foreign = await conn.scalar(
            sa.text("SELECT 1 FROM task WHERE input->>'bench' IS DISTINCT FROM :m LIMIT 1"),
            {"m": MARK},
        )
    if args.keep and existing:
        log(f"--keep: reusing the {existing} rows in task")
        return {"rows": existing, "filled": False}
    if foreign and not args.wipe:
        raise SystemExit("task holds tasks this benchmark did not write; pass --wipe to drop them")
    log(f"filling task with {args.rows} rows (one INSERT ... SELECT)")
    start = time.perf_counter()
    async with engine.begin() as conn:
        await conn.execute(sa.text("TRUNCATE task CASCADE"))
        await conn.execute(sa.text("SET LOCAL synchronous_commit = off"))
        await conn.execute(sa.text(FILL), {"rows": args.rows, "mark": MARK})
    insert_seconds = time.perf_counter() - start
    log(f"inserted in {insert_seconds:.1f}s; VACUUM ANALYZE task")
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(sa.text("VACUUM (ANALYZE) task"))
    total = time.perf_counter() - start
    log(f"fill done in {total:.1f}s")
    return {
        "rows": args.rows,
        "filled": True,
        "insert_seconds": round(insert_seconds, 1),
        "fill_seconds_incl_vacuum_analyze": round(total, 1),
    }


async def table_facts(engine: AsyncEngine) -> dict[str, Any]:
    async with engine.connect() as conn:
        size = await conn.scalar(sa.text("SELECT pg_size_pretty(pg_total_relation_size('task'))"))
        owner_rows = await conn.scalar(
            sa.text("SELECT count(*) FROM task WHERE owner = :o"), {"o": OWNER}
        )
        indexes = (
            await conn.execute(
                sa.text("SELECT indexname FROM pg_indexes WHERE tablename = 'task' ORDER BY 1")
            )
        ).scalars()
        return {"total_size": size, "bench_owner_rows": owner_rows, "indexes": list(indexes)}


async def explain_case(engine: AsyncEngine, case: Case, first: int) -> dict[str, Any]:
    """Run list_tasks itself (to the case's last page), capture its SQL, EXPLAIN it."""
    captured: list[tuple[str, Any]] = []

    def capture(_c: Any, _cur: Any, statement: str, params: Any, _ctx: Any, _many: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM task" in statement:
            captured.append((statement, params))

    after: str | None = None
    sa.event.listen(engine.sync_engine, "before_cursor_execute", capture)
    try:
        for _ in range(case.pages):
            page = await list_tasks(
                engine=engine, owner=OWNER, filter=case.filter, first=first, after=after
            )
            if not page.has_next_page:
                break
            after = page.cursor_of(page.tasks[-1])
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", capture)
    statement, params = captured[-1]
    async with engine.connect() as conn:
        result = await conn.exec_driver_sql(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, params
        )
        doc = result.scalar_one()
        text = await conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, params)
        lines = [str(r[0]) for r in text]
    plan = (orjson.loads(doc) if isinstance(doc, str | bytes) else doc)[0]
    return {
        "top_node": _describe(plan["Plan"]),
        "scan": _scan(plan["Plan"]),
        "execution_ms": round(plan["Execution Time"], 2),
        "planning_ms": round(plan["Planning Time"], 2),
        "shared_buffers_hit_read": [
            plan["Plan"].get("Shared Hit Blocks"),
            plan["Plan"].get("Shared Read Blocks"),
        ],
        "plan": lines,
    }


def _describe(node: dict[str, Any]) -> str:
    name = str(node["Node Type"])
    if "Index Name" in node:
        name += f" using {node['Index Name']}"
    return name


def _scan(node: dict[str, Any]) -> str:
    """The plan's scans, outermost first (what the LIMIT is fed by)."""
    found: list[str] = []

    def walk(n: dict[str, Any]) -> None:
        kind = str(n["Node Type"])
        if "Scan" in kind:
            found.append(f"{_describe(n)} (rows {n.get('Actual Rows')})")
        for child in n.get("Plans", []):
            walk(child)

    walk(node)
    return "; ".join(found)


@contextlib.asynccontextmanager
async def api_process(database_url: str, redis_url: str, data_dir: Path) -> AsyncIterator[str]:
    """`python -m taskrunner api` on a free port; yields its GraphQL URL once ready."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "TASKS_PER_MINUTE": "0",
        "LOG_LEVEL": "WARNING",
        "PORT": str(port),
        "DATA_DIR": str(data_dir),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "taskrunner", "api", cwd=REPO, env=env
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base) as client, asyncio.timeout(60):
            while True:
                if proc.returncode is not None:
                    raise SystemExit(f"the api exited with {proc.returncode} at start")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
        yield f"{base}/graphql"
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def time_case(client: Client, case: Case, args: argparse.Namespace) -> dict[str, Any]:
    after: str | None = None
    depth = 0
    times: list[float] = []
    rows = 0
    for i in range(args.warmup + args.requests):
        start = time.perf_counter()
        data = await client.gql(LIST, first=args.first, after=after, filter=case.gql_filter)
        elapsed = (time.perf_counter() - start) * 1000
        page = data["tasks"]
        if i >= args.warmup:
            times.append(elapsed)
            rows += len(page["edges"])
        depth += 1
        if depth < case.pages and page["pageInfo"]["hasNextPage"]:
            after = page["pageInfo"]["endCursor"]
        else:
            after, depth = None, 0
    times.sort()
    return {
        "requests": len(times),
        "avg_rows": round(rows / len(times), 1),
        **{p: percentile(times, q, 2) for p, q in (("p50", 50), ("p95", 95), ("p99", 99))},
        "max": round(times[-1], 2),
    }


async def run(args: argparse.Namespace, database_url: str, redis_url: str) -> dict[str, Any]:
    engine = create_engine(database_url, pool_size=2)
    try:
        filled = await fill(engine, args)
        facts = await table_facts(engine)
        _, secret = await keys.create(
            engine, name=f"bench-list-{uuid.uuid4().hex[:8]}", owner=OWNER
        )
        all_cases = cases(args.pages)
        explains: dict[str, Any] = {}
        for case in all_cases:
            log(f"EXPLAIN {case.name}")
            explains[case.name] = await explain_case(engine, case, args.first)
    finally:
        await engine.dispose()
    latency: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-list-api-") as data_dir:
        async with (
            api_process(database_url, redis_url, Path(data_dir)) as url,
            Client(url, secret, connections=1) as client,
        ):
            for case in all_cases:
                log(f"timing {case.name}: {args.warmup} warm-up + {args.requests} requests")
                latency[case.name] = await time_case(client, case, args)
                log(f"  {latency[case.name]}")
            for name, (hours, bucket) in STATS_CASES.items():
                log(f"timing {name}: {args.warmup} warm-up + {args.requests} requests")
                latency[name] = await time_stats(client, hours, bucket, args)
                log(f"  {latency[name]}")
    return {
        "table": {**filled, **facts},
        "first": args.first,
        "latency_ms": latency,
        "explain": explains,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", help="a migrated database (default: embedded)")
    parser.add_argument("--redis-url", help="Redis for the api (default: embedded)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="tasks to insert")
    parser.add_argument("--requests", type=int, default=300, help="timed requests per case")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests per case")
    parser.add_argument("--pages", type=int, default=20, help="pages the paging case follows")
    parser.add_argument("--first", type=int, default=50, help="page size")
    parser.add_argument("--keep", action="store_true", help="reuse existing rows, no refill")
    parser.add_argument("--wipe", action="store_true", help="refill even over foreign tasks")
    args = parser.parse_args()
    if args.rows < 1 or args.requests < 1 or args.warmup < 0 or args.pages < 1:
        parser.error("--rows, --requests and --pages must be >= 1, --warmup >= 0")
    try:
        with servers(args) as (database_url, redis_url):
            result = asyncio.run(run(args, database_url, redis_url))
    except GraphQLError as exc:
        log(f"bench: {exc}")
        return 1
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
