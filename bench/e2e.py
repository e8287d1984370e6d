"""End-to-end throughput and latency benchmark: no-op `echo` tasks submitted over GraphQL.

Against an already running stack:

    make dev                                                   # in one terminal
    .venv/bin/python bench/e2e.py -n 1000                      # in another: --mode concurrent
    .venv/bin/python bench/e2e.py --mode batch -n 5000 --batch 100 --concurrency 4
    .venv/bin/python bench/e2e.py --mode rate --rate 200 --duration 30

Modes (--mode):

- concurrent (default): N `submitTask` calls from --concurrency clients (default 20), each
  sending its next call when the previous one returned (closed loop).
- batch: N tasks in `submitTasks` calls of --batch tasks (default 100, the server's default
  MAX_BATCH_SIZE), --concurrency calls in flight at once (default 4).
- rate: open-loop offered load: --rate single `submitTask` calls a second for --duration
  seconds, call i due at start + i/rate whether or not earlier ones returned; at most
  --max-in-flight (default 200, also the connection pool size) requests are outstanding, a
  call that finds them all busy waits and counts as sent late.

In every mode a failed submission is counted (submit_errors, a few submit_error_examples)
instead of stopping the run; n is the number of tasks actually submitted (of requested).

Every task carries a label unique to the run ("bench-<hex>"), so only this run's tasks are
polled (every --poll seconds, after the last submission) and read back. Prints exactly one
JSON line on stdout (progress goes to stderr). Times are client wall clock (`time.time()`)
and the tasks' `createdAt` / `startedAt` / `finishedAt` (database clock; same machine):

- submit_seconds / submit_rate: first submission sent -> last one answered, tasks per second
- completion_seconds / completion_rate: first submission sent -> last task finished
  (its finishedAt), tasks per second
- latency_ms: created -> finished percentiles; created_to_started_ms: created -> started
- rate mode only: offered_rate_per_s, achieved_send_rate_per_s, achieved_submit_rate_per_s,
  send lag behind the schedule (send_lag_ms, max_send_lag_ms, fell_behind_schedule when the
  max lag exceeds 100 ms), submit_to_running_ms (client send -> startedAt, matched by task
  id), scheduled_to_running_ms (due time -> startedAt, free of coordinated omission) and
  backlog_growing: whether the created -> started p50 of the last 10% of tasks (by
  createdAt) is over 3 x that of the first 10% + 50 ms (both figures are reported).

Exit codes: 0 ok, 1 GraphQL/HTTP error, 2 timed out (--timeout seconds after the last
submission) with tasks still unfinished. The JSON line is printed in all these cases except
an error while polling or reading back.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from common import Client, GraphQLError, log, percentile

SUBMIT = """mutation($m: String!, $l: String!) {
  submitTask(task: {echo: {message: $m}}, options: {labels: [$l]}) { id } }"""
SUBMIT_BATCH = """mutation($t: [TaskSubmissionInput!]!) { submitTasks(tasks: $t) { id } }"""
UNFINISHED = """query($l: String!) {
  tasks(first: 100, filter: {label: $l, status: [QUEUED, RUNNING]}) {
    edges { node { id } } pageInfo { hasNextPage } } }"""
READ_BACK = """query($l: String!, $after: String) {
  tasks(first: 100, after: $after, filter: {label: $l}) {
    edges { node { id status createdAt startedAt finishedAt } }
    pageInfo { hasNextPage endCursor } } }"""

MODES = ("concurrent", "batch", "rate")
DEFAULT_CONCURRENCY = {"concurrent": 20, "batch": 4}
BEHIND_MS = 100.0  # fell_behind_schedule: some call was sent more than this late
MAX_ERRORS_SHOWN = 5


@dataclass
class Submitted:
    """What the submission phase leaves for the report."""

    requested: int  # tasks the run meant to submit
    first_sent: float  # time.time() just before the first request
    last_answered: float = 0.0  # time.time() when the last request returned
    sent_at: dict[str, float] = field(default_factory=dict)  # task id -> time.time() sent
    due_at: dict[str, float] = field(default_factory=dict)  # task id -> scheduled wall time
    lags_ms: list[float] = field(default_factory=list)  # rate mode: send time - due time
    last_sent: float = 0.0
    max_in_flight: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return len(self.sent_at)


def progress(done: int, total: int) -> None:
    step = max(1, total // 10)
    if done % step == 0 or done == total:
        log(f"submitted {done}/{total}")


async def submit_concurrent(client: Client, args: argparse.Namespace, label: str) -> Submitted:
    indices = iter(range(args.count))
    out = Submitted(requested=args.count, first_sent=time.time())

    async def submitter() -> None:
        for i in indices:  # shared iterator: each index is taken by exactly one submitter
            sent = time.time()
            try:
                data = await client.gql(SUBMIT, m=f"bench {i}", l=label)
            except GraphQLError as exc:
                out.errors.append(str(exc))
                continue
            out.sent_at[data["submitTask"]["id"]] = sent
            progress(out.accepted, args.count)

    await asyncio.gather(*(submitter() for _ in range(min(args.concurrency, args.count))))
    out.last_answered = time.time()
    return out


async def submit_batches(client: Client, args: argparse.Namespace, label: str) -> Submitted:
    starts = iter(range(0, args.count, args.batch))
    out = Submitted(requested=args.count, first_sent=time.time())
    step = max(1, args.count // 10)

    async def submitter() -> None:
        for start in starts:  # shared iterator, as in submit_concurrent
            tasks = [
                {"task": {"echo": {"message": f"bench {i}"}}, "options": {"labels": [label]}}
                for i in range(start, min(start + args.batch, args.count))
            ]
            sent = time.time()
            try:
                data = await client.gql(SUBMIT_BATCH, t=tasks)
            except GraphQLError as exc:
                out.errors.append(str(exc))
                continue
            before = out.accepted
            for task in data["submitTasks"]:
                out.sent_at[task["id"]] = sent
            if out.accepted // step != before // step or out.accepted == args.count:
                log(f"submitted {out.accepted}/{args.count}")

    batches = -(-args.count // args.batch)
    await asyncio.gather(*(submitter() for _ in range(min(args.concurrency, batches))))
    out.last_answered = time.time()
    return out


async def submit_rate(client: Client, args: argparse.Namespace, label: str) -> Submitted:
    total = max(1, round(args.rate * args.duration))
    slots = asyncio.Semaphore(args.max_in_flight)
    running: set[asyncio.Task[None]] = set()
    in_flight = 0
    answered = 0
    start = time.monotonic()
    start_wall = time.time()
    out = Submitted(requested=total, first_sent=start_wall)

    async def one(i: int) -> None:
        nonlocal in_flight, answered
        due = i / args.rate
        async with slots:
            lag = time.monotonic() - start - due
            sent = time.time()
            out.last_sent = sent
            in_flight += 1
            out.max_in_flight = max(out.max_in_flight, in_flight)
            out.lags_ms.append(max(0.0, lag) * 1000)
            try:
                data = await client.gql(SUBMIT, m=f"bench {i}", l=label)
            except GraphQLError as exc:
                out.errors.append(str(exc))
                return
            finally:
                in_flight -= 1
                answered += 1
                out.last_answered = time.time()
                progress(answered, total)
        task_id = data["submitTask"]["id"]
        out.sent_at[task_id] = sent
        out.due_at[task_id] = start_wall + due

    for i in range(total):
        delay = start + i / args.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(i))
        running.add(task)
        task.add_done_callback(running.discard)
    await asyncio.gather(*running)
    return out


async def wait_finished(
    client: Client, args: argparse.Namespace, label: str, deadline: float
) -> bool:
    last_log = 0.0
    while True:
        page = (await client.gql(UNFINISHED, l=label))["tasks"]
        if not page["edges"]:
            return True
        now = time.monotonic()
        if now - last_log >= 1.0:
            more = "+" if page["pageInfo"]["hasNextPage"] else ""
            log(f"unfinished: {len(page['edges'])}{more}")
            last_log = now
        if now >= deadline:
            return False
        await asyncio.sleep(args.poll)


async def read_back(client: Client, url: str, label: str) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        page = (await client.gql(READ_BACK, l=label, after=after))["tasks"]
        nodes.extend(edge["node"] for edge in page["edges"])
        if not page["pageInfo"]["hasNextPage"]:
            return nodes
        after = page["pageInfo"]["endCursor"]


def epoch(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


def pcts(values_ms: list[float]) -> dict[str, float | None]:
    ordered = sorted(values_ms)
    return {p: percentile(ordered, q) for p, q in (("p50", 50), ("p95", 95), ("p99", 99))}


def rate(count: int, seconds: float | None) -> float | None:
    return round(count / seconds, 1) if seconds and seconds > 0 else None


def backlog(tasks: list[tuple[float, float | None]]) -> dict[str, Any]:
    """created -> started p50 of the first and the last 10% of tasks (by createdAt)."""
    ordered = sorted(tasks)
    decile = max(1, len(ordered) // 10)

    def p50(part: list[tuple[float, float | None]]) -> float | None:
        return pcts([(s - c) * 1000 for c, s in part if s is not None])["p50"]

    first, last = p50(ordered[:decile]), p50(ordered[-decile:])
    return {
        "backlog_growing": None if first is None or last is None else last > 3 * first + 50,
        "backlog_first_decile_created_to_started_p50_ms": first,
        "backlog_last_decile_created_to_started_p50_ms": last,
    }


def report(
    args: argparse.Namespace,
    label: str,
    out: Submitted,
    nodes: list[dict[str, Any]],
    finished: bool,
    observed_seconds: float,
) -> dict[str, Any]:
    times = {
        t["id"]: (epoch(t["createdAt"]), epoch(t["startedAt"]), epoch(t["finishedAt"]))
        for t in nodes
    }
    to_finish = [(f - c) * 1000 for c, _, f in times.values() if c is not None and f is not None]
    to_start = [(s - c) * 1000 for c, s, _ in times.values() if c is not None and s is not None]
    last_finish = max((f for _, _, f in times.values() if f is not None), default=None)
    submit_seconds = out.last_answered - out.first_sent
    completion_seconds = (
        last_finish - out.first_sent if last_finish is not None and finished else None
    )
    n = out.accepted
    result: dict[str, Any] = {
        "mode": args.mode,
        "n": n,
        "requested": out.requested,
        "submit_errors": len(out.errors),
        "submit_error_examples": out.errors[:MAX_ERRORS_SHOWN],
        "label": label,
        "submit_seconds": round(submit_seconds, 3),
        "submit_rate": rate(n, submit_seconds),
        "completion_seconds": round(completion_seconds, 3) if completion_seconds else None,
        "completion_rate": rate(n, completion_seconds),
        "completion_seconds_observed": round(observed_seconds, 3),
        "timed_out": not finished,
        "latency_ms": pcts(to_finish),
        "latency_samples": len(to_finish),
        "created_to_started_ms": pcts(to_start),
        "created_to_started_samples": len(to_start),
        "read_back": len(nodes),
        "status": dict(Counter(t["status"] for t in nodes)),
    }
    if args.mode == "concurrent":
        result["concurrency"] = args.concurrency
    elif args.mode == "batch":
        result.update(concurrency=args.concurrency, batch=args.batch)
    else:
        send_span = out.last_sent - out.first_sent + 1 / args.rate
        started = {i: t[1] for i, t in times.items() if t[1]}
        max_lag = max(out.lags_ms, default=0.0)
        result.update(
            offered_rate_per_s=args.rate,
            duration_seconds=args.duration,
            max_in_flight_allowed=args.max_in_flight,
            max_in_flight=out.max_in_flight,
            achieved_send_rate_per_s=rate(len(out.lags_ms), send_span),
            achieved_submit_rate_per_s=rate(n, submit_seconds),
            send_lag_ms={
                **pcts(out.lags_ms),
                "max": round(max_lag, 1),
            },
            max_send_lag_ms=round(max_lag, 1),
            fell_behind_schedule=max_lag > BEHIND_MS,
            submit_to_running_ms=pcts(
                [(started[i] - sent) * 1000 for i, sent in out.sent_at.items() if i in started]
            ),
            scheduled_to_running_ms=pcts(
                [(started[i] - due) * 1000 for i, due in out.due_at.items() if i in started]
            ),
            submit_to_running_samples=sum(1 for i in out.sent_at if i in started),
            **backlog([(c, s) for c, s, _ in times.values() if c is not None]),
        )
    return result


async def run(args: argparse.Namespace) -> int:
    label = f"bench-{uuid.uuid4().hex[:12]}"
    pool = (args.max_in_flight if args.mode == "rate" else args.concurrency) + 2
    async with Client(args.url, args.api_key, connections=pool) as client:
        if args.mode == "rate":
            log(
                f"offering {args.rate}/s echo tasks for {args.duration}s to {args.url}"
                f" (label {label})"
            )
            out = await submit_rate(client, args, label)
        elif args.mode == "batch":
            log(
                f"submitting {args.count} echo tasks to {args.url} in batches of {args.batch}"
                f" (label {label})"
            )
            out = await submit_batches(client, args, label)
        else:
            log(f"submitting {args.count} echo tasks to {args.url} (label {label})")
            out = await submit_concurrent(client, args, label)
        finished = await wait_finished(client, args, label, time.monotonic() + args.timeout)
        observed_seconds = time.time() - out.first_sent
        nodes = await read_back(client, args.url, label)
    print(orjson.dumps(report(args, label, out, nodes, finished, observed_seconds)).decode())
    if out.errors:
        log(f"{len(out.errors)} submissions failed, e.g. {out.errors[0]}")
        return 1
    if not finished:
        log(f"timed out {args.timeout}s after the last submission with tasks still unfinished")
        return 2
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000/graphql")
    parser.add_argument("--mode", choices=MODES, default="concurrent")
    parser.add_argument("-n", "--count", type=int, default=1000, help="tasks (concurrent, batch)")
    parser.add_argument(
        "--concurrency",
        type=int,
        help="concurrent clients (default 20) or batches in flight (default 4)",
    )
    parser.add_argument("--batch", type=int, default=100, help="tasks per submitTasks (batch)")
    parser.add_argument("--rate", type=float, default=100.0, help="submissions a second (rate)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load (rate)")
    parser.add_argument(
        "--max-in-flight", type=int, default=200, help="outstanding requests at most (rate)"
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait after the last submission"
    )
    parser.add_argument("--poll", type=float, default=0.2, help="seconds between status polls")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("TASKRUNNER_API_KEY"),
        help="sent as `Authorization: Bearer KEY` (default: $TASKRUNNER_API_KEY)",
    )
    args = parser.parse_args()
    if args.concurrency is None:
        args.concurrency = DEFAULT_CONCURRENCY.get(args.mode, 1)
    if args.count < 1 or args.concurrency < 1 or args.batch < 1 or args.max_in_flight < 1:
        parser.error("--count, --concurrency, --batch and --max-in-flight must be at least 1")
    if args.rate <= 0 or args.duration <= 0 or args.poll <= 0:
        parser.error("--rate, --duration and --poll must be positive")
    try:
        return asyncio.run(run(args))
    except GraphQLError as exc:
        log(f"bench: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
