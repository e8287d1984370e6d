"""Process tasks against in-process ones: what running a body in a child process costs.

Against a running stack (as bench/e2e.py): N `sleep {seconds: 0}` tasks (an in-process
no-op) and N `sleep {seconds: 0, blocking: true}` tasks (the same no-op in a child process,
workers.processes), submitted through submitTasks in batches of 100, one mode after the
other and each twice (in, process, in, process), after a warm-up that starts the worker's
children (the pool warm). For each mode: completion_rate (tasks/s, first submission ->
last finishedAt), and run_ms percentiles (startedAt -> finishedAt: the body's time as the
worker measures it, which for a process task includes sending the input to the child and
the result back; in a batch, also the wait for a free child). First 50 of each run one at a
time (`alone_run_ms_*`: no wait for a child): `process_overhead_ms` is the difference of
their p50s, the per-task cost of a process task with the pool warm. A worker runs at most
WORKER_PROCESSES process tasks at once, which bounds their completion rate.

    .venv/bin/python bench/process_echo.py --url http://127.0.0.1:8000/graphql -n 500

Prints one JSON line on stdout (progress on stderr)."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from datetime import datetime
from typing import Any

from common import Client, log, percentile

SUBMIT = "mutation($t: [TaskSubmissionInput!]!) { submitTasks(tasks: $t) { id } }"
PAGE = """
query($label: String!, $after: String) {
  tasks(first: 100, after: $after, filter: {label: $label}) {
    edges { node { status createdAt startedAt finishedAt } }
    pageInfo { hasNextPage endCursor }
  }
}"""
MODES = {"in_process": {"seconds": 0}, "process": {"seconds": 0, "blocking": True}}


def ms(a: str, b: str) -> float:
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds() * 1000


async def run(client: Client, sleep: dict[str, Any], count: int, within: float) -> dict[str, Any]:
    label = f"bench-{uuid.uuid4().hex[:12]}"
    task = {"task": {"sleep": sleep}, "options": {"labels": [label]}}
    began = time.time()
    for start in range(0, count, 100):
        await client.gql(SUBMIT, t=[task] * min(100, count - start))
    deadline = time.monotonic() + within
    while True:
        nodes: list[dict[str, Any]] = []
        after = None
        while True:
            page = (await client.gql(PAGE, label=label, after=after))["tasks"]
            nodes += [e["node"] for e in page["edges"]]
            if not page["pageInfo"]["hasNextPage"]:
                break
            after = page["pageInfo"]["endCursor"]
        if all(n["status"] == "SUCCEEDED" for n in nodes) and len(nodes) == count:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {sum(n['status'] == 'SUCCEEDED' for n in nodes)}")
        await asyncio.sleep(0.2)
    last = max(datetime.fromisoformat(n["finishedAt"]).timestamp() for n in nodes)
    runs = sorted(ms(n["startedAt"], n["finishedAt"]) for n in nodes)
    return {
        "completion_rate": round(count / (last - began), 1),
        "run_ms": {p: percentile(runs, q, 2) for p, q in (("p50", 50), ("p99", 99))},
    }


TASK = "query($id: ID!) { task(id: $id) { status startedAt finishedAt } }"
ONE = "mutation($t: TaskSpecInput!) { submitTask(task: $t) { id } }"


async def one_at_a_time(client: Client, sleep: dict[str, Any], count: int) -> list[float]:
    """run_ms of `count` tasks run one after another: no wait for a free child in them."""
    runs = []
    for _ in range(count):
        task_id = (await client.gql(ONE, t={"sleep": sleep}))["submitTask"]["id"]
        found: dict[str, Any] = {}
        for _ in range(2000):  # polled: at most 10 s
            found = (await client.gql(TASK, id=task_id))["task"]
            if found["status"] == "SUCCEEDED":
                break
            await asyncio.sleep(0.005)
        runs.append(ms(found["startedAt"], found["finishedAt"]))
    return sorted(runs)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    async with Client(args.url, args.api_key) as client:
        await run(client, MODES["process"], 10, args.timeout)  # the children start: warm
        alone = {mode: await one_at_a_time(client, sleep, 50) for mode, sleep in MODES.items()}
        rounds: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
        for _ in range(2):
            for mode, sleep in MODES.items():
                log(f"{mode}: {args.count} tasks")
                rounds[mode].append(await run(client, sleep, args.count, args.timeout))
    result: dict[str, Any] = {"n": args.count}
    for mode, runs in rounds.items():
        result[mode] = {
            "alone_run_ms_p50": percentile(alone[mode], 50, 2),
            "alone_run_ms_p99": percentile(alone[mode], 99, 2),
            "completion_rate": max(r["completion_rate"] for r in runs),
            "batch_run_ms_p50": min(r["run_ms"]["p50"] for r in runs),
            "rounds": runs,
        }
    result["process_overhead_ms"] = round(
        result["process"]["alone_run_ms_p50"] - result["in_process"]["alone_run_ms_p50"], 2
    )
    return result


if __name__ == "__main__":
    import orjson

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000/graphql")
    parser.add_argument("--api-key", default=os.environ.get("TASKRUNNER_API_KEY"))
    parser.add_argument("-n", "--count", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=300.0)
    print(orjson.dumps(asyncio.run(main(parser.parse_args()))).decode(), flush=True)
