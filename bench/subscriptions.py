"""Subscription delivery latency: from an event's commit to its receipt, at 1..N subscribers.

Against an already running stack:

    make dev                                          # in one terminal (or `taskrunner dev`)
    .venv/bin/python bench/subscriptions.py --api-pid "$(pgrep -f 'taskrunner api')"

For each subscriber count (`--subscribers 1,100,1000`) one `chatter` task is submitted with
`delaySeconds` (`--delay`, default 2) so it is still QUEUED while every subscriber subscribes to
it with `taskUpdates` over websockets (graphql-transport-ws, `--per-connection` subscriptions,
default 50, multiplexed on each connection). The task then writes `--events` log lines, one
every `--interval` seconds: by default 100 lines at 10 per second (`--interval 0.1`), so 1,000
subscribers take 10,000 deliveries per second. The first scenario wrote 100 per second
(`--interval 0.01`: 100,000 deliveries per second at 1,000 subscribers, more than one api
process and this client can take on a small machine); run it that way to compare. For every
event after the QUEUED backlog event, each subscriber's latency is its receipt time
(`time.time()` as the message is read) minus the event's `at` (the database clock when the
event row was inserted); client and server must share one clock, so run it on the API's
machine. The client runs on uvloop when it is installed, as the api does.

Prints exactly one JSON line on stdout (progress goes to stderr): the `scenario` (events,
rate, subscriptions per connection, compression, client loop) and, per subscriber count:
`events` (the task's events per subscriber, from `task.events`), `samples` (latencies taken),
`p50_ms`/`p99_ms`/`max_ms`, `first_p50_ms`/`first_p99_ms` (per event, the latency of the first
subscriber to get it: commit -> publish -> api; the rest of `p99_ms` is the fan-out), `missing`
(expected events not received, summed over subscribers), `duplicates` (events received
again), `out_of_order` (cursors not strictly increasing), `late` (subscribers whose first
event was not the QUEUED one received before the task started), `errors` (failed
subscriptions or connections), `timed_out`, `subscribe_ms` (submission to every subscriber
holding its QUEUED event), `client_cpu_pct` (this process' CPU while events streamed; near 100
means the client, not the server, was the bottleneck), `api_cpu_pct` and
`api_us_per_delivery` (the api's CPU while events streamed, per delivery) and `api_rss_mb`
(peak RSS of `--api-pid` during that run). The top-level `api_rss_mb` is the peak during the
largest run (null without `--api-pid`). Exit codes: 0 ok, 1 GraphQL/HTTP error,
2 some run timed out, lost, repeated or reordered events, or subscribed late (the JSON line is
still printed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from common import GraphQLError, gql, log, percentile
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException
from websockets.typing import Subprotocol

SUBMIT = """mutation($t: TaskSpecInput!, $o: TaskOptionsInput) {
  submitTask(task: $t, options: $o) { id } }"""
SUBSCRIBE = """subscription($id: ID!) {
  taskUpdates(id: $id) { __typename cursor at ... on StatusChanged { status } } }"""
EVENTS = """query($id: ID!, $after: String) {
  task(id: $id) { events(after: $after, first: 100) {
    __typename cursor at ... on StatusChanged { status } } } }"""
PROTOCOL = Subprotocol("graphql-transport-ws")
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}


def ws_url(url: str) -> str:
    if url.startswith("https://"):
        return "wss://" + url.removeprefix("https://")
    return "ws://" + url.removeprefix("http://")


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        return None
    return None


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process so far, from /proc/PID/stat."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Subscriber:
    key: str
    # (receipt time.time(), __typename, cursor, at, status) as read off the socket
    received: list[tuple[float, str, str, str, str | None]] = field(default_factory=list)
    done: bool = False
    error: str | None = None


@dataclass
class Run:
    task_id: str
    subscribers: list[Subscriber]
    api_pid: int | None
    first_seen: int = 0
    all_first: asyncio.Event = field(default_factory=asyncio.Event)
    connection_errors: list[str] = field(default_factory=list)
    # (process_time, perf_counter, api CPU) when the first live event (after QUEUED) arrived
    live_since: tuple[float, float, float | None] | None = None

    def record(self, sub: Subscriber, payload: dict[str, Any], now: float) -> None:
        event = (payload.get("data") or {}).get("taskUpdates")
        if payload.get("errors") or event is None:
            sub.error = orjson.dumps(payload.get("errors")).decode()
            return
        if self.live_since is None and event.get("status") != "QUEUED":
            self.live_since = (time.process_time(), time.perf_counter(), cpu_seconds(self.api_pid))
        if not sub.received:
            self.first_seen += 1
            if self.first_seen == len(self.subscribers):
                self.all_first.set()
        sub.received.append(
            (now, event["__typename"], event["cursor"], event["at"], event.get("status"))
        )


async def follow(
    url: str, subs: list[Subscriber], run: Run, compression: bool, api_key: str | None = None
) -> None:
    """One websocket carrying `subs`: subscribe them all and record what arrives until done."""
    by_key = {sub.key: sub for sub in subs}
    open_subs = len(subs)
    async with connect(
        url,
        subprotocols=[PROTOCOL],
        compression="deflate" if compression else None,
        max_size=None,
        open_timeout=30,
    ) as ws:
        init: dict[str, Any] = {"type": "connection_init"}
        if api_key:
            init["payload"] = {"Authorization": f"Bearer {api_key}"}
        await ws.send(orjson.dumps(init).decode())
        ack = orjson.loads(await ws.recv())
        if ack.get("type") != "connection_ack":
            raise GraphQLError(f"expected connection_ack, got {ack}")
        for sub in subs:
            variables = {"id": run.task_id}
            payload = {"query": SUBSCRIBE, "variables": variables}
            await ws.send(
                orjson.dumps({"id": sub.key, "type": "subscribe", "payload": payload}).decode()
            )
        async for raw in ws:
            now = time.time()
            msg = orjson.loads(raw)
            kind = msg.get("type")
            if kind == "ping":
                await ws.send(orjson.dumps({"type": "pong"}).decode())
                continue
            target = by_key.get(msg.get("id", ""))
            if target is None or target.done:
                continue
            if kind == "next":
                run.record(target, msg["payload"], now)
            elif kind in ("complete", "error"):
                if kind == "error":
                    target.error = orjson.dumps(msg.get("payload")).decode()
                target.done = True
                open_subs -= 1
                if open_subs == 0:
                    return
    raise GraphQLError(f"connection closed with {open_subs} subscriptions still open")


async def follow_logged(
    url: str, subs: list[Subscriber], run: Run, compression: bool, api_key: str | None
) -> None:
    try:
        await follow(url, subs, run, compression, api_key)
    except (OSError, WebSocketException, GraphQLError, orjson.JSONDecodeError) as exc:
        run.connection_errors.append(repr(exc))
        for sub in subs:
            if not sub.done and sub.error is None:
                sub.error = f"connection: {exc!r}"


async def sample_rss(pid: int, peak: list[float]) -> None:
    while True:
        value = rss_mb(pid)
        if value is not None and value > peak[0]:
            peak[0] = value
        await asyncio.sleep(0.1)


async def task_events(client: httpx.AsyncClient, url: str, task_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        task = (await gql(client, url, EVENTS, id=task_id, after=after))["task"]
        page = task["events"] if task else []
        events.extend(page)
        if len(page) < 100:  # MAX_PAGE_SIZE's default: the last page
            return events
        after = page[-1]["cursor"]


def analyse(run: Run, expected: list[dict[str, Any]]) -> dict[str, Any]:
    """Latency over every (subscriber, event after QUEUED) pair, and delivery checks."""
    expected_cursors = {e["cursor"] for e in expected}
    started = next(
        (
            e["at"]
            for e in expected
            if e["__typename"] == "StatusChanged" and e.get("status") == "RUNNING"
        ),
        None,
    )
    started_ts = datetime.fromisoformat(started).timestamp() if started else math.inf
    parsed: dict[str, float] = {}
    latencies: list[float] = []
    fastest: dict[str, float] = {}  # cursor -> the lowest latency any subscriber had for it
    missing = duplicates = out_of_order = late = errors = 0
    for sub in run.subscribers:
        errors += sub.error is not None
        first = sub.received[0] if sub.received else None
        if first is None or first[4] != "QUEUED" or first[0] >= started_ts:
            late += 1
        seen: set[str] = set()
        previous = -1
        for received, typename, cursor, at, status in sub.received:
            number = int(cursor)
            if cursor in seen:
                duplicates += 1
            elif number <= previous:
                out_of_order += 1
            seen.add(cursor)
            previous = max(previous, number)
            if typename not in ("LogAppended", "StatusChanged") or status == "QUEUED":
                continue
            at_ts = parsed.get(at)
            if at_ts is None:
                at_ts = parsed[at] = datetime.fromisoformat(at).timestamp()
            latency = (received - at_ts) * 1000
            latencies.append(latency)
            if latency < fastest.get(cursor, math.inf):
                fastest[cursor] = latency
        missing += len(expected_cursors - seen)
    latencies.sort()
    firsts = sorted(fastest.values())
    return {
        "events": len(expected),
        "samples": len(latencies),
        "p50_ms": percentile(latencies, 50, 2),
        "p99_ms": percentile(latencies, 99, 2),
        "max_ms": round(latencies[-1], 2) if latencies else None,
        "first_p50_ms": percentile(firsts, 50, 2),
        "first_p99_ms": percentile(firsts, 99, 2),
        "missing": missing,
        "duplicates": duplicates,
        "out_of_order": out_of_order,
        "late": late,
        "errors": errors,
    }


async def measure(
    client: httpx.AsyncClient, args: argparse.Namespace, count: int
) -> dict[str, Any]:
    spec = {
        "chatter": {"progressSteps": 0, "logLines": args.events, "intervalSeconds": args.interval}
    }
    submitted = time.perf_counter()
    data = await gql(client, args.url, SUBMIT, t=spec, o={"delaySeconds": args.delay})
    task_id = data["submitTask"]["id"]
    subscribers = [Subscriber(key=str(i + 1)) for i in range(count)]
    run = Run(task_id=task_id, subscribers=subscribers, api_pid=args.api_pid)
    per = args.per_connection
    chunks = [subscribers[i : i + per] for i in range(0, count, per)]
    log(f"{count} subscribers on {len(chunks)} connections to task {task_id}")
    peak = [0.0]
    sampler = asyncio.create_task(sample_rss(args.api_pid, peak)) if args.api_pid else None
    followers = [
        asyncio.create_task(
            follow_logged(ws_url(args.url), chunk, run, not args.no_compression, args.api_key)
        )
        for chunk in chunks
    ]
    everything = asyncio.gather(*followers)
    timed_out = False
    subscribe_ms: float | None = None
    try:
        async with asyncio.timeout(args.timeout):
            first_wait = asyncio.create_task(run.all_first.wait())
            waiting: list[asyncio.Future[Any]] = [first_wait, everything]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            first_wait.cancel()
            if run.all_first.is_set():
                subscribe_ms = round((time.perf_counter() - submitted) * 1000, 1)
                log(f"all {count} subscribed with their QUEUED event after {subscribe_ms} ms")
                if subscribe_ms > args.delay * 1000:
                    log(f"warning: subscribing took longer than --delay {args.delay}s")
            else:
                log(f"only {run.first_seen}/{count} got their QUEUED event")
            await everything
    except TimeoutError:
        timed_out = True
        done = sum(sub.done for sub in subscribers)
        log(f"timed out after {args.timeout}s: {done}/{count} subscriptions completed")
    finally:
        everything.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await everything
        if sampler:
            sampler.cancel()
    client_cpu_pct = api_cpu_pct = api_cpu_s = None
    if run.live_since:
        client_cpu, since, api_cpu = run.live_since
        wall = time.perf_counter() - since
        api_now = cpu_seconds(args.api_pid)
        if wall > 0:
            client_cpu_pct = round(100 * (time.process_time() - client_cpu) / wall, 1)
            if api_cpu is not None and api_now is not None:
                api_cpu_s = api_now - api_cpu
                api_cpu_pct = round(100 * api_cpu_s / wall, 1)
    for error in run.connection_errors[:5]:
        log(f"connection error: {error}")
    for sub in subscribers:
        if sub.error:
            log(f"subscription {sub.key} error: {sub.error}")
            break
    expected = await task_events(client, args.url, task_id)
    result = analyse(run, expected)
    deliveries = result["samples"]
    result.update(
        timed_out=timed_out,
        subscribe_ms=subscribe_ms,
        client_cpu_pct=client_cpu_pct,
        api_cpu_pct=api_cpu_pct,
        api_us_per_delivery=round(api_cpu_s * 1e6 / deliveries, 1)
        if api_cpu_s is not None and deliveries
        else None,
        api_rss_mb=round(peak[0], 1) if sampler else None,
    )
    log(f"{count}: {orjson.dumps(result).decode()}")
    return result


async def run_all(args: argparse.Namespace) -> int:
    results: dict[str, dict[str, Any]] = {}
    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    async with httpx.AsyncClient(headers=headers, timeout=30.0) as client:
        for count in args.subscribers:
            results[str(count)] = await measure(client, args, count)
    largest = str(max(args.subscribers))
    scenario = {
        "events": args.events,
        "interval_s": args.interval,
        "events_per_s": round(1 / args.interval, 1) if args.interval > 0 else None,
        "per_connection": args.per_connection,
        "compression": not args.no_compression,
        "client_loop": "uvloop" if client_loop() else "asyncio",
    }
    print(
        orjson.dumps(
            {
                "scenario": scenario,
                "subscribers": results,
                "api_rss_mb": results[largest]["api_rss_mb"],
            }
        ).decode()
    )
    bad = any(
        r["timed_out"] or r["missing"] or r["duplicates"] or r["out_of_order"] or r["late"]
        for r in results.values()
    )
    return 2 if bad else 0


def client_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (as under the api): the client reads every message of every
    subscriber, so the cheaper it is per message, the more the figures are the server's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000/graphql")
    parser.add_argument(
        "--subscribers",
        default="1,100,1000",
        help="comma-separated subscriber counts, one run each",
    )
    parser.add_argument("--events", type=int, default=100, help="log lines the task writes")
    parser.add_argument(
        "--interval",
        type=float,
        default=0.1,
        help="seconds between log lines (0.1: 10 events/s; the first scenario used 0.01)",
    )
    parser.add_argument(
        "--delay", type=int, default=2, help="seconds the task waits before it starts"
    )
    parser.add_argument(
        "--per-connection", type=int, default=50, help="subscriptions per websocket (<= 100)"
    )
    parser.add_argument("--no-compression", action="store_true", help="no permessage-deflate")
    parser.add_argument("--api-pid", type=int, help="api process to read VmRSS of")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("TASKRUNNER_API_KEY"),
        help="sent as `Authorization: Bearer KEY` (default: $TASKRUNNER_API_KEY)",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per run")
    args = parser.parse_args()
    try:
        args.subscribers = [int(s) for s in args.subscribers.split(",") if s.strip()]
    except ValueError:
        parser.error("--subscribers must be comma-separated integers")
    if not args.subscribers or min(args.subscribers) < 1:
        parser.error("--subscribers must be at least 1")
    if args.events < 0 or args.delay < 1 or args.per_connection < 1:
        parser.error("--events must be >= 0, --delay and --per-connection >= 1")
    try:
        with asyncio.Runner(loop_factory=client_loop()) as runner:
            return runner.run(run_all(args))
    except GraphQLError as exc:
        log(f"bench: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
