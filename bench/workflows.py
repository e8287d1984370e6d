"""Workflow benchmark: diamonds of `sum` steps against the same tasks submitted alone.

Against an already running stack (bench/run.py passes all of this for `make bench`):

    .venv/bin/python bench/workflows.py --database-url postgresql://... \\
        --redis-url redis://... --api-pid 1234 --worker-pids 1235 --diamonds 1000

It reads PostgreSQL directly (`--database-url`): the times it reports are the tasks' own
columns, not what a client saw. Two runs, one after the other, on the same stack:

- `alone`: 4 x --diamonds `sum` tasks with the diamonds' inputs (no dependencies), through
  `submitTasks` of 100, --in-flight calls at once (as e2e-batch does);
- `workflow`: --diamonds workflows through `submitWorkflows`, 25 per call (100 steps, as a
  submitTasks batch), --in-flight calls at once,
  each a diamond a -> (b, c) -> d of `sum` steps whose bindings append their parents' sums
  (`numbers[]`), so d = 1000 + (10 + 3) + (100 + 3) = 1116.

For each run: submit_seconds (first call to last answer), drain_seconds (first created_at to
last finished_at) and completion_rate (tasks finished per second of it), CPU of the api, the
worker(s), PostgreSQL and Redis per task, and statements and Redis commands per task (when
PostgreSQL preloads pg_stat_statements, as bench/run.py makes it). For `workflow` also
workflows_per_s, and `dependent_start_latency_ms` p50/p95/p99/max: for each step with
parents, its started_at minus the latest finished_at of its parents (the settling in the
parent's transaction, the enqueue, the worker's claim and start), over the b, c and d steps.
`ratio_to_alone`: the workflow run's completion_rate over the alone run's.

Prints exactly one JSON line on stdout (progress goes to stderr). Exit codes: 0 ok, 1
GraphQL/HTTP or database error, 2 a check failed (a task or workflow unfinished at
--timeout, not SUCCEEDED, or a d whose sum is not 1116); the JSON line is printed then too.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections import Counter
from typing import Any

import asyncpg
import orjson
from common import Client, GraphQLError, log
from orchestration import (
    OWN_QUERIES,
    Counts,
    Meter,
    ms_stats,
    pg_url,
    printable,
    stack_arguments,
    stack_pids,
)
from redis.asyncio import Redis

SUBMIT_BATCH = """mutation($t: [TaskSubmissionInput!]!) { submitTasks(tasks: $t) { id } }"""
PER_CALL = 25  # diamonds per submitWorkflows call: 100 steps, as a submitTasks batch of 100
SUBMIT_WORKFLOWS = """mutation($w: [WorkflowInput!]!) { submitWorkflows(workflows: $w) { id } }"""

BATCH = 100  # submitTasks per call: the server's default MAX_BATCH_SIZE
D_SUM = 1116  # 1000 + (10 + 3) + (100 + 3)

Q_UNFINISHED_TASKS = "SELECT count(*) FROM task WHERE id = ANY($1::uuid[]) AND finished_at IS NULL"
Q_RUNNING_WORKFLOWS = "SELECT count(*) FROM workflow WHERE id = ANY($1::uuid[]) AND status = $2"
Q_TASKS = """SELECT id, status, created_at, started_at, finished_at FROM task
WHERE id = ANY($1::uuid[])"""
Q_STEPS = """SELECT s.workflow_id, s.key, s.depends_on, t.status, t.created_at, t.started_at,
t.finished_at, t.result FROM workflow_step s JOIN task t ON t.id = s.task_id
WHERE s.workflow_id = ANY($1::uuid[])"""
Q_WORKFLOWS = "SELECT status, count(*) FROM workflow WHERE id = ANY($1::uuid[]) GROUP BY status"
# this script's own queries are left out of the statement counts, as orchestration.py's are
OWN_QUERIES.update(
    " ".join(q.split())
    for q in (Q_UNFINISHED_TASKS, Q_RUNNING_WORKFLOWS, Q_TASKS, Q_STEPS, Q_WORKFLOWS)
)


def step(key: str, numbers: list[int], *parents: str) -> dict[str, Any]:
    return {
        "key": key,
        "task": {"sum": {"numbers": numbers}},
        "dependsOn": list(parents),
        "bind": [{"field": "numbers[]", "step": p, "path": "sum"} for p in parents],
    }


def diamond(i: int) -> dict[str, Any]:
    return {
        "name": f"bench diamond {i}",
        "steps": [
            step("a", [1, 2]),
            step("b", [10], "a"),
            step("c", [100], "a"),
            step("d", [1000], "b", "c"),
        ],
    }


# the same four tasks, alone: the inputs the diamond's steps run with once bound
ALONE = [[1, 2], [10, 3], [100, 3], [1000, 13, 103]]


async def in_flight(calls: list[Any], limit: int) -> tuple[list[Any], float]:
    """Await the coroutine factories `limit` at a time; their results in order, and the
    seconds from the first call to the last answer."""
    results: list[Any] = [None] * len(calls)
    todo = iter(range(len(calls)))

    async def runner() -> None:
        for i in todo:
            results[i] = await calls[i]()

    began = time.monotonic()
    await asyncio.gather(*(runner() for _ in range(min(limit, len(calls)))))
    return results, time.monotonic() - began


async def wait_for(
    conn: asyncpg.Connection, query: str, ids: list[uuid.UUID], within: float, *more: Any
) -> int:
    """Poll `query` (a count of what is left) until 0 or for `within` seconds; what is left."""
    deadline = time.monotonic() + within
    while (left := int(await conn.fetchval(query, ids, *more))) > 0:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    return left


def drain(rows: list[Any]) -> tuple[float | None, float | None]:
    """(first created_at to last finished_at in seconds, tasks finished per second of it)"""
    finished = [r["finished_at"] for r in rows if r["finished_at"]]
    if not rows or not finished:
        return None, None
    seconds = (max(finished) - min(r["created_at"] for r in rows)).total_seconds()
    return round(seconds, 3), round(len(finished) / seconds, 1) if seconds > 0 else None


async def alone_run(
    args: argparse.Namespace, client: Client, conn: asyncpg.Connection
) -> tuple[dict[str, Any], bool]:
    tasks = [{"task": {"sum": {"numbers": n}}} for _ in range(args.diamonds) for n in ALONE]
    batches = [tasks[i : i + BATCH] for i in range(0, len(tasks), BATCH)]
    answers, submit_seconds = await in_flight(
        [lambda b=b: client.gql(SUBMIT_BATCH, t=b) for b in batches], args.in_flight
    )
    ids = [uuid.UUID(t["id"]) for a in answers for t in a["submitTasks"]]
    left = await wait_for(conn, Q_UNFINISHED_TASKS, ids, args.timeout)
    rows = await conn.fetch(Q_TASKS, ids)
    seconds, rate = drain(rows)
    status = dict(Counter(r["status"] for r in rows))
    out = {
        "tasks": len(ids),
        "submit_calls": len(batches),
        "submit_seconds": round(submit_seconds, 3),
        "drain_seconds": seconds,
        "completion_rate": rate,
        "status": status,
        "unfinished_at_timeout": left,
    }
    return out, left == 0 and status == {"SUCCEEDED": len(ids)}


async def workflow_run(
    args: argparse.Namespace, client: Client, conn: asyncpg.Connection
) -> tuple[dict[str, Any], bool]:
    calls = [
        range(start, min(start + PER_CALL, args.diamonds))
        for start in range(0, args.diamonds, PER_CALL)
    ]
    answers, submit_seconds = await in_flight(
        [lambda c=c: client.gql(SUBMIT_WORKFLOWS, w=[diamond(n) for n in c]) for c in calls],
        args.in_flight,
    )
    ids = [uuid.UUID(w["id"]) for a in answers for w in a["submitWorkflows"]]
    left = await wait_for(conn, Q_RUNNING_WORKFLOWS, ids, args.timeout, "RUNNING")
    rows = await conn.fetch(Q_STEPS, ids)
    workflows = {r["status"]: r["count"] for r in await conn.fetch(Q_WORKFLOWS, ids)}
    seconds, rate = drain(rows)
    by_workflow: dict[uuid.UUID, dict[str, Any]] = {}
    for r in rows:
        by_workflow.setdefault(r["workflow_id"], {})[r["key"]] = r
    latencies, wrong = [], 0
    for steps in by_workflow.values():
        for r in steps.values():
            parents = [steps[p]["finished_at"] for p in r["depends_on"]]
            if r["started_at"] and parents and all(parents):
                latencies.append((r["started_at"] - max(parents)).total_seconds())
        d = steps.get("d")
        wrong += d is None or orjson.loads(d["result"] or "null") != {"sum": D_SUM}
    status = dict(Counter(r["status"] for r in rows))
    out = {
        "workflows": len(ids),
        "steps": len(rows),
        "submit_calls": len(calls),
        "submit_seconds": round(submit_seconds, 3),
        "drain_seconds": seconds,
        "completion_rate": rate,
        "workflows_per_s": round(len(ids) / seconds, 1) if seconds else None,
        "dependent_start_latency_ms": ms_stats(latencies),
        "status": status,
        "workflow_status": workflows,
        "wrong_d_results": wrong,
        "unfinished_at_timeout": left,
    }
    ok = (
        left == 0
        and status == {"SUCCEEDED": 4 * len(ids)}
        and workflows == {"SUCCEEDED": len(ids)}
        and wrong == 0
    )
    return out, ok


async def run(args: argparse.Namespace) -> int:
    conn = await asyncpg.connect(pg_url(args.database_url))
    redis = Redis.from_url(args.redis_url)
    counts = Counts(conn, redis)
    result: dict[str, Any] = {
        "scenario": "workflow",
        "diamonds": args.diamonds,
        "in_flight": args.in_flight,
        "runs": {},
    }
    ok = True
    try:
        groups = await stack_pids(conn, redis, args.api_pid, args.worker_pids)
        meter = Meter(groups)
        await counts.setup()
        async with Client(args.url, args.api_key, connections=args.in_flight + 2) as client:
            for name, measure in (("alone", alone_run), ("workflow", workflow_run)):
                log(f"{name}: {args.diamonds} diamonds' worth of sum tasks ({4 * args.diamonds})")
                await counts.reset()
                meter.start()
                report, passed = await measure(args, client, conn)
                tasks = report.get("tasks", report.get("steps", 0))
                report["cpu"] = meter.stop(tasks)
                report.update(printable(await counts.take(tasks)))
                result["runs"][name] = report
                ok = ok and passed
    finally:
        await counts.restore()
        await conn.close()
        await redis.aclose()
    alone, workflow = result["runs"].get("alone", {}), result["runs"].get("workflow", {})
    mine, theirs = workflow.get("completion_rate"), alone.get("completion_rate")
    result.update(
        steps_per_s=mine,
        alone_tasks_per_s=theirs,
        ratio_to_alone=round(mine / theirs, 3) if mine and theirs else None,
        workflows_per_s=workflow.get("workflows_per_s"),
        dependent_start_latency_ms=workflow.get("dependent_start_latency_ms"),
        processes=groups,
        ok=ok,
    )
    print(orjson.dumps(result).decode())
    if not ok:
        log("a check failed: see the JSON (unfinished, not SUCCEEDED, or a wrong sum of d)")
        return 2
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    stack_arguments(parser)
    parser.add_argument("--diamonds", type=int, default=1000, help="workflows of 4 steps")
    parser.add_argument("--in-flight", type=int, default=4, help="submit calls at once")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for a run to finish"
    )
    args = parser.parse_args()
    if not args.database_url or not args.redis_url:
        parser.error("--database-url and --redis-url are needed (or DATABASE_URL, REDIS_URL)")
    if args.diamonds < 1 or args.in_flight < 1 or args.timeout <= 0:
        parser.error("--diamonds and --in-flight must be at least 1, --timeout positive")
    try:
        return asyncio.run(run(args))
    except GraphQLError as exc:
        log(f"bench: {exc}")
        return 1
    except (asyncpg.PostgresError, OSError) as exc:
        log(f"bench: database or Redis error: {exc!r}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
