"""End-to-end throughput and latency benchmark: submit N no-op `echo` tasks over GraphQL.

Against an already running stack:

    make dev                                     # in one terminal (or `taskrunner dev`)
    .venv/bin/python bench/e2e.py -n 1000        # in another

Every task carries a label unique to the run ("bench-<hex>"), so only this run's tasks are
polled and read back. Prints exactly one JSON line on stdout (progress goes to stderr): submit
and completion times and rates as seen by the client, created->finished latency percentiles
(ms, from the tasks' `createdAt` / `finishedAt`) and counts by final status. Exit codes: 0 ok,
1 GraphQL/HTTP error, 2 timed out with tasks still unfinished (the JSON line is still printed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections import Counter
from datetime import datetime
from typing import Any

import httpx
import orjson
from common import GraphQLError, gql, log, percentile

SUBMIT = """mutation($m: String!, $l: String!) {
  submitTask(task: {echo: {message: $m}}, options: {labels: [$l]}) { id } }"""
UNFINISHED = """query($l: String!) {
  tasks(first: 100, filter: {label: $l, status: [QUEUED, RUNNING]}) {
    edges { node { id } } pageInfo { hasNextPage } } }"""
READ_BACK = """query($l: String!, $after: String) {
  tasks(first: 100, after: $after, filter: {label: $l}) {
    edges { node { id status createdAt finishedAt } } pageInfo { hasNextPage endCursor } } }"""


async def submit_all(client: httpx.AsyncClient, args: argparse.Namespace, label: str) -> None:
    indices = iter(range(args.count))
    done = 0
    step = max(1, args.count // 10)

    async def submitter() -> None:
        nonlocal done
        for i in indices:  # shared iterator: each index is taken by exactly one submitter
            await gql(client, args.url, SUBMIT, m=f"bench {i}", l=label)
            done += 1
            if done % step == 0:
                log(f"submitted {done}/{args.count}")

    await asyncio.gather(*(submitter() for _ in range(min(args.concurrency, args.count))))


async def wait_finished(
    client: httpx.AsyncClient, args: argparse.Namespace, label: str, deadline: float
) -> bool:
    last_log = 0.0
    while True:
        page = (await gql(client, args.url, UNFINISHED, l=label))["tasks"]
        if not page["edges"]:
            return True
        now = time.perf_counter()
        if now - last_log >= 1.0:
            more = "+" if page["pageInfo"]["hasNextPage"] else ""
            log(f"unfinished: {len(page['edges'])}{more}")
            last_log = now
        if now >= deadline:
            return False
        await asyncio.sleep(args.poll)


async def read_back(client: httpx.AsyncClient, url: str, label: str) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        page = (await gql(client, url, READ_BACK, l=label, after=after))["tasks"]
        nodes.extend(edge["node"] for edge in page["edges"])
        if not page["pageInfo"]["hasNextPage"]:
            return nodes
        after = page["pageInfo"]["endCursor"]


async def run(args: argparse.Namespace) -> int:
    label = f"bench-{uuid.uuid4().hex[:12]}"
    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    limits = httpx.Limits(
        max_connections=args.concurrency + 2, max_keepalive_connections=args.concurrency + 2
    )
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30.0) as client:
        log(f"submitting {args.count} echo tasks to {args.url} (label {label})")
        start = time.perf_counter()
        await submit_all(client, args, label)
        submit_seconds = time.perf_counter() - start
        finished = await wait_finished(client, args, label, start + args.timeout)
        completion_seconds = time.perf_counter() - start
        nodes = await read_back(client, args.url, label)
    latencies = sorted(
        (
            datetime.fromisoformat(t["finishedAt"]) - datetime.fromisoformat(t["createdAt"])
        ).total_seconds()
        * 1000
        for t in nodes
        if t["finishedAt"] and t["createdAt"]
    )
    result = {
        "n": args.count,
        "concurrency": args.concurrency,
        "label": label,
        "submit_seconds": round(submit_seconds, 3),
        "submit_rate": round(args.count / submit_seconds, 1),
        "completion_seconds": round(completion_seconds, 3),
        "completion_rate": round(args.count / completion_seconds, 1),
        "timed_out": not finished,
        "latency_ms": {
            p: percentile(latencies, q) for p, q in (("p50", 50), ("p95", 95), ("p99", 99))
        },
        "latency_samples": len(latencies),
        "read_back": len(nodes),
        "status": dict(Counter(t["status"] for t in nodes)),
    }
    print(orjson.dumps(result).decode())
    if not finished:
        log(f"timed out after {args.timeout}s with tasks still QUEUED/RUNNING")
        return 2
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000/graphql")
    parser.add_argument("-n", "--count", type=int, default=1000, help="tasks to submit")
    parser.add_argument("--concurrency", type=int, default=20, help="concurrent submitters")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for all")
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between status polls")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("TASKRUNNER_API_KEY"),
        help="sent as `Authorization: Bearer KEY` (default: $TASKRUNNER_API_KEY)",
    )
    args = parser.parse_args()
    if args.count < 1 or args.concurrency < 1:
        parser.error("--count and --concurrency must be at least 1")
    try:
        return asyncio.run(run(args))
    except GraphQLError as exc:
        log(f"bench: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
