"""Fair sharing under a flood: owner A (the bench's key) submits -n echo tasks through
submitTasks (batches of 100, 4 in flight), and one second after its last batch owner B (a
key made here) submits 10. Prints JSON: A's backlog when B submitted, B's created->started
(ms: p50, max), and A's drain time. Without fair sharing B would wait for A's backlog."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
from common import Client, log

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from taskrunner import keys
from taskrunner.db import create_engine

BATCH = "mutation($t: [TaskSubmissionInput!]!) { submitTasks(tasks: $t) { id } }"


async def main(args: argparse.Namespace) -> dict[str, Any]:
    engine = create_engine(args.database_url, pool_size=1)
    try:
        _, b_key = await keys.create(engine, name="bench-fair-b", owner="bench-fair-b")
    finally:
        await engine.dispose()
    dsn = args.database_url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    sem = asyncio.Semaphore(4)
    async with Client(args.url, args.api_key) as a, Client(args.url, b_key) as b:
        owner_a = "bench"  # the owner of bench/run.py's key

        async def batch(n: int) -> list[str]:
            tasks = [{"task": {"echo": {"message": f"fair-a-{n}-{i}"}}} for i in range(100)]
            async with sem:
                data = await a.gql(BATCH, t=tasks)
            return [t["id"] for t in data["submitTasks"]]

        began = time.monotonic()
        await asyncio.gather(*(batch(n) for n in range(args.count // 100)))
        submitted = time.monotonic() - began
        await asyncio.sleep(1.0)
        backlog = await conn.fetchval(
            "SELECT count(*) FROM task WHERE owner = $1 AND status = 'QUEUED'", owner_a
        )
        mine = [{"task": {"echo": {"message": f"fair-b-{i}"}}} for i in range(10)]
        ids = [t["id"] for t in (await b.gql(BATCH, t=mine))["submitTasks"]]
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            left = await conn.fetchval(
                "SELECT count(*) FROM task WHERE status IN ('QUEUED', 'RUNNING') "
                "AND owner = ANY($1::text[])",
                [owner_a, "bench-fair-b"],
            )
            if left == 0:
                break
            await asyncio.sleep(0.1)
        drained = time.monotonic() - began
        rows = await conn.fetch(
            "SELECT extract(epoch FROM started_at - created_at) AS wait FROM task "
            "WHERE id = ANY($1::uuid[]) AND started_at IS NOT NULL",
            ids,
        )
        waits = sorted(float(r["wait"]) * 1000 for r in rows)
    await conn.close()
    log(f"A's backlog {backlog} when B submitted; B waited {waits} ms")
    return {
        "scenario": "fairness",
        "flood": args.count,
        "flood_submit_seconds": round(submitted, 3),
        "a_backlog_when_b_submitted": backlog,
        "b_created_to_started_ms": {
            "p50": round(waits[len(waits) // 2], 1) if waits else None,
            "max": round(waits[-1], 1) if waits else None,
            "samples": len(waits),
        },
        "all_drained_seconds": round(drained, 3),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("-n", "--count", type=int, default=5000, help="A's flood (x100)")
    parser.add_argument("--timeout", type=float, default=300)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
