"""Orchestration benchmarks: schedules firing on time, and tasks waiting on a concurrency slot.

Against an already running stack (bench/run.py passes all of this for `make bench`):

    .venv/bin/python bench/orchestration.py --scenario schedules \\
        --database-url postgresql://... --redis-url redis://... \\
        --api-pid 1234 --worker-pids 1235 --seconds 20
    .venv/bin/python bench/orchestration.py --scenario concurrency -n 200 --limit 4

It reads PostgreSQL directly (`--database-url`, as superuser for the statement counts): the
times it reports are the tasks' own columns, not what a client saw.

--scenario schedules: creates --schedules (1,000) schedules, `everySeconds: 1`, task echo,
through `createSchedule` (the api needs MAX_SCHEDULES_PER_OWNER at least that, and
TASKS_PER_MINUTE=0 or high enough for 1,000 tasks a second). Once every schedule ticks, it
watches a window of --seconds (an integer, so each schedule has exactly that many ticks in
it, whatever its phase), then deletes the schedules and reads back the tasks of the ticks in
the window:
- ticks: expected (schedules x seconds), fired, missing, duplicates (tasks sharing a
  (schedule, scheduledFor): must be 0, at any time, not only in the window), skipped (the
  schedules' skippedTicks), started_in_window; fired_per_s and started_per_s over the
  window (started below fired: the workers cannot run what fires, and start lateness grows)
- fire_lateness_ms: created_at - scheduled_for (when the tick's task was committed, against
  its tick), p50/p95/p99/max; start_lateness_ms: started_at - scheduled_for
- cpu: CPU seconds of the api, the worker(s), PostgreSQL (postmaster and its backends) and
  Redis over the window, their % of one core, CPU ms per task fired in the window, and
  `machine`: the whole box's busy % and the CPU seconds of everything else on it (on a
  shared machine other work skews every figure)
- statements / redis: see below, per task fired in the window; `schedule_statements_per_tick`
  counts the statements on the `schedule` table (claiming, saving, the next due time), the
  part a tick adds to an ordinary submission; fire_rounds (fire_due's claims) and
  ticks_per_round.
- drain_after_delete_seconds: the wait, after the deletion, until every task the schedules
  fired has finished (so that none runs into the next scenario).

--scenario concurrency: -n (200) `sleep` tasks of --sleep (0.05 s) with one concurrencyKey
and --limit (4), submitted at once (submitTasks of 100). For each start after the first
`limit` (by started_at): the time from the latest finished_at before it (the slot that freed)
to that start: `slot_start_latency_ms` p50/p95/p99/max. Also drain_seconds (first created_at
to last finished_at) against the ideal n x sleep / limit, max_running_sampled (RUNNING tasks
of the key, sampled every --sample-ms) and max_running_overlap (the most [started_at,
finished_at] intervals that overlap: the same check from the recorded times); both must be
at most the limit. Two reference runs of the same tasks come first, for the statement and
Redis counts: `no-key` (no concurrencyKey) and `key-never-full` (a key whose limit is n, so
every start takes a slot and none waits); `limited` is the run above. `key-never-full`
minus `no-key` is what the concurrency check itself costs per task; `limited` minus
`key-never-full` is what waiting costs (a start refused, the release, a second delivery).

Statement counts come from pg_stat_statements when the server preloads it (bench/run.py
does; `"statements": {"skipped": ...}` otherwise): this script resets it, turns tracking on
(`pg_stat_statements.track = top`, so a plpgsql function is one statement) for the
measurement and restores the setting after. Its own queries are left out of the counts (they
are recognised by their text). BEGIN/COMMIT are counted apart from the other statements.
Redis counts are the calls of INFO commandstats over the same span (a pipeline's commands
count one each: an upper bound on round trips), this script's own INFO calls left out.

Prints exactly one JSON line on stdout (progress goes to stderr). Exit codes: 0 ok,
1 GraphQL/HTTP or database error, 2 a check failed (duplicates, missing ticks, more RUNNING
than the limit, tasks unfinished at --timeout); the JSON line is printed in that case too.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson
import psutil
from common import Client, GraphQLError, log, percentile
from redis.asyncio import Redis

SCENARIOS = ("schedules", "concurrency")

CREATE_SCHEDULE = """mutation($s: ScheduleInput!) { createSchedule(schedule: $s) { id } }"""
DELETE_SCHEDULE = """mutation($id: ID!) { deleteSchedule(id: $id) }"""
SUBMIT_BATCH = """mutation($t: [TaskSubmissionInput!]!) { submitTasks(tasks: $t) { id } }"""
BATCH = 100  # submitTasks per call: the server's default MAX_BATCH_SIZE
CLIENTS = 20  # GraphQL calls in flight while creating or deleting schedules
ON_TIME_SECONDS = 5.0  # taskrunner.schedules.ON_TIME_SECONDS: a tick later than this is missed

# Every query this script sends, parameters only (no literals, no comments): pg_stat_statements
# stores them as written, so they are told apart from the service's by their text.
Q_NOW = "SELECT clock_timestamp()"
Q_BACKEND = "SELECT pg_backend_pid()"
Q_CREATED = "SELECT max(created_at) FROM schedule WHERE id = ANY($1::uuid[])"
Q_FIRED = """SELECT count(*) FROM task
WHERE schedule_id = ANY($1::uuid[]) AND scheduled_for >= $2 AND scheduled_for < $3"""
Q_FIRED_IN = """SELECT count(*) FROM task
WHERE schedule_id = ANY($1::uuid[]) AND created_at >= $2 AND created_at < $3"""
Q_STARTED_IN = """SELECT count(*) FROM task
WHERE schedule_id = ANY($1::uuid[]) AND started_at >= $2 AND started_at < $3"""
Q_TICKS = """SELECT schedule_id, scheduled_for, created_at, started_at, finished_at, status
FROM task WHERE schedule_id = ANY($1::uuid[]) AND scheduled_for >= $2 AND scheduled_for < $3"""
Q_DUPLICATES = """SELECT count(*) - count(DISTINCT (schedule_id, scheduled_for)) FROM task
WHERE schedule_id = ANY($1::uuid[])"""
Q_SKIPPED = "SELECT coalesce(sum(skipped), 0) FROM schedule WHERE id = ANY($1::uuid[])"
Q_UNFINISHED = """SELECT count(*) FROM task
WHERE schedule_id = ANY($1::uuid[]) AND finished_at IS NULL"""
Q_LEFT = "SELECT id FROM schedule WHERE id = ANY($1::uuid[])"
Q_DELETE = "DELETE FROM schedule WHERE id = ANY($1::uuid[])"
Q_SAMPLE = """SELECT count(*) FILTER (WHERE status = $2), count(*) FILTER (WHERE status = ANY($3))
FROM task WHERE id = ANY($1::uuid[])"""
Q_TASKS = """SELECT id, status, created_at, started_at, finished_at, attempts FROM task
WHERE id = ANY($1::uuid[])"""
Q_PRELOADED = "SELECT current_setting($1)"
Q_EXTENSION = "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"
Q_TRACK = "SELECT current_setting($1, $2)"
Q_RELOAD = "SELECT pg_reload_conf()"
Q_RESET = "SELECT pg_stat_statements_reset()"
Q_STATEMENTS = """SELECT query, calls FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"""
TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "START TRANSACTION")
TOP_STATEMENTS = 12


def pg_url(url: str) -> str:
    """The URL as asyncpg takes it (SQLAlchemy's `postgresql+asyncpg://` accepted too)."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def ms_stats(values_s: Iterable[float]) -> dict[str, float | int | None]:
    ordered = sorted(v * 1000 for v in values_s)
    return {
        "samples": len(ordered),
        "p50": percentile(ordered, 50),
        "p95": percentile(ordered, 95),
        "p99": percentile(ordered, 99),
        "max": round(ordered[-1], 1) if ordered else None,
        "min": round(ordered[0], 1) if ordered else None,
    }


def per(total: float | int | None, count: int, digits: int = 2) -> float | None:
    return round(total / count, digits) if total is not None and count else None


# --- CPU ---------------------------------------------------------------------------------


def tree_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) of a process, its live descendants and the children it
    reaped (a PostgreSQL backend that exits is counted by the postmaster's children times)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


@dataclass
class Meter:
    """CPU of the stack's processes, by group (api, worker, postgres, redis)."""

    groups: dict[str, list[int]]
    since: dict[str, float | None] = field(default_factory=dict)
    started: float = 0.0
    client_since: float = 0.0
    machine_since: Any = None

    def snapshot(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name, pids in self.groups.items():
            values = [tree_cpu(pid) for pid in pids]
            out[name] = None if not pids or None in values else sum(v or 0.0 for v in values)
        return out

    def start(self) -> None:
        self.since = self.snapshot()
        self.started = time.monotonic()
        self.client_since = time.process_time()
        self.machine_since = psutil.cpu_times()

    def stop(self, tasks: int) -> dict[str, Any]:
        """CPU since start(): seconds and % of one core per group, ms per task, the sum."""
        now = self.snapshot()
        seconds = time.monotonic() - self.started
        out: dict[str, Any] = {"window_seconds": round(seconds, 2), "tasks": tasks}
        total = 0.0
        for name in self.groups:
            before, after = self.since.get(name), now.get(name)
            if before is None or after is None:
                out[name] = None
                continue
            used = after - before
            total += used
            out[name] = {
                "cpu_seconds": round(used, 2),
                "cpu_pct": round(100 * used / seconds, 1) if seconds > 0 else None,
                "cpu_ms_per_task": per(used * 1000, tasks),
            }
        out["total_cpu_seconds"] = round(total, 2)
        out["total_cpu_ms_per_task"] = per(total * 1000, tasks)
        client = time.process_time() - self.client_since
        out["bench_client_cpu_seconds"] = round(client, 2)
        out["machine"] = self._machine(seconds, total + client)
        return out

    def _machine(self, seconds: float, ours: float) -> dict[str, Any]:
        """The whole machine's busy CPU over the span, and how much of it was neither the
        stack nor this client: other work on a shared box skews every figure here."""
        now = psutil.cpu_times()

        def busy(t: Any) -> float:
            return float(sum(t)) - float(t.idle) - float(getattr(t, "iowait", 0.0))

        used = busy(now) - busy(self.machine_since)
        cores = psutil.cpu_count() or 1
        return {
            "cpus": cores,
            "busy_pct": round(100 * used / (seconds * cores), 1) if seconds > 0 else None,
            "others_cpu_seconds": round(max(0.0, used - ours), 2),
            "load_average_1m": round(os.getloadavg()[0], 2),
        }


async def stack_pids(
    conn: asyncpg.Connection, redis: Redis, api_pid: int | None, worker_pids: list[int]
) -> dict[str, list[int]]:
    """The processes to meter: the api and workers as given, the postmaster (the parent of
    this connection's backend) and Redis (its INFO process_id)."""
    groups: dict[str, list[int]] = {
        "api": [api_pid] if api_pid else [],
        "worker": worker_pids,
        "postgres": [],
        "redis": [],
    }
    backend = await conn.fetchval(Q_BACKEND)
    try:
        groups["postgres"] = [psutil.Process(backend).ppid()]
    except psutil.Error:
        log(f"PostgreSQL backend {backend} is not on this machine: its CPU is not metered")
    info = await redis.info("server")
    pid = info.get("process_id")
    if pid and psutil.pid_exists(int(pid)):
        groups["redis"] = [int(pid)]
    else:
        log("Redis is not on this machine: its CPU is not metered")
    return groups


# --- statement and Redis command counts --------------------------------------------------

OWN_QUERIES = {
    " ".join(q.split())
    for q in (
        Q_NOW,
        Q_BACKEND,
        Q_CREATED,
        Q_FIRED,
        Q_FIRED_IN,
        Q_STARTED_IN,
        Q_TICKS,
        Q_DUPLICATES,
        Q_SKIPPED,
        Q_UNFINISHED,
        Q_LEFT,
        Q_DELETE,
        Q_SAMPLE,
        Q_TASKS,
        Q_PRELOADED,
        Q_EXTENSION,
        Q_TRACK,
        Q_RELOAD,
        Q_RESET,
        Q_STATEMENTS,
    )
}


def _own(query: str) -> bool:
    text = " ".join(query.split())
    return text in OWN_QUERIES or text.startswith("ALTER SYSTEM SET pg_stat_statements.track")


class Counts:
    """pg_stat_statements and Redis commandstats over a span: `await reset()`, then
    `await take(tasks)`. Statements are None (with the reason in `skipped`) when the server
    does not preload pg_stat_statements or this user may not use it."""

    def __init__(self, conn: asyncpg.Connection, redis: Redis) -> None:
        self.conn = conn
        self.redis = redis
        self.skipped: str | None = None
        self.previous_track: str | None = None
        self.redis_since: Counter[str] = Counter()

    async def setup(self) -> None:
        try:
            preloaded = await self.conn.fetchval(Q_PRELOADED, "shared_preload_libraries")
            if "pg_stat_statements" not in preloaded:
                self.skipped = (
                    "pg_stat_statements is not in shared_preload_libraries (bench/run.py "
                    "loads it; for a stack of your own add it to postgresql.conf and restart)"
                )
                return
            await self.conn.execute(Q_EXTENSION)
            self.previous_track = await self.conn.fetchval(
                Q_TRACK, "pg_stat_statements.track", False
            )
            if self.previous_track not in ("top", "all"):
                await self._set_track("top")
        except asyncpg.PostgresError as exc:
            self.skipped = f"pg_stat_statements unusable here: {exc}"

    async def _set_track(self, value: str) -> None:
        # ALTER SYSTEM takes no parameters; the value is one of pg_stat_statements' own
        # words (`top`, `all`, `none`), as read from the server or chosen here.
        if value not in ("top", "all", "none"):
            raise ValueError(f"pg_stat_statements.track: unexpected value {value!r}")
        await self.conn.execute(f"ALTER SYSTEM SET pg_stat_statements.track = '{value}'")
        await self.conn.execute(Q_RELOAD)
        await asyncio.sleep(0.3)  # backends take the new value at their next statement

    async def restore(self) -> None:
        if self.skipped is None and self.previous_track not in (None, "top", "all"):
            try:
                await self._set_track(str(self.previous_track))
            except asyncpg.PostgresError as exc:
                log(f"could not restore pg_stat_statements.track: {exc}")

    async def _redis_calls(self) -> Counter[str]:
        stats = await self.redis.info("commandstats")
        calls: Counter[str] = Counter()
        for name, value in stats.items():
            command = name.removeprefix("cmdstat_")
            calls[command] = int(value["calls"]) if isinstance(value, dict) else 0
        return calls

    async def reset(self) -> None:
        if self.skipped is None:
            await self.conn.execute(Q_RESET)
        self.redis_since = await self._redis_calls()

    async def take(self, tasks: int) -> dict[str, Any]:
        out: dict[str, Any] = {"tasks": tasks}
        if self.skipped is not None:
            out["statements"] = {"skipped": self.skipped}
        else:
            rows = [r for r in await self.conn.fetch(Q_STATEMENTS) if not _own(r["query"])]
            control = sum(r["calls"] for r in rows if _is_control(r["query"]))
            other = [r for r in rows if not _is_control(r["query"])]
            total = sum(r["calls"] for r in other)
            top = sorted(other, key=lambda r: -r["calls"])[:TOP_STATEMENTS]
            out["statements"] = {
                "total": total,
                "per_task": per(total, tasks),
                "transaction_control": control,
                "transaction_control_per_task": per(control, tasks),
                "top": [
                    {
                        "calls": r["calls"],
                        "per_task": per(r["calls"], tasks, 3),
                        "query": " ".join(r["query"].split())[:160],
                    }
                    for r in top
                ],
                "_rows": other,  # for the caller's own breakdowns; dropped before printing
            }
        calls = await self._redis_calls()
        delta = Counter({k: v - self.redis_since.get(k, 0) for k, v in calls.items()})
        delta["info"] -= 2  # this span's own two INFO commandstats
        delta = Counter({k: v for k, v in delta.items() if v > 0})
        total_redis = sum(delta.values())
        out["redis"] = {
            "commands": total_redis,
            "per_task": per(total_redis, tasks),
            "by_command": {k: v for k, v in delta.most_common(10)},
        }
        return out


def _is_control(query: str) -> bool:
    return query.strip().upper().startswith(TRANSACTION_CONTROL)


def calls_matching(counts: dict[str, Any], pattern: str) -> int | None:
    """Calls of the statements whose text matches the regular expression `pattern`
    (case-insensitive)."""
    rows = counts.get("statements", {}).get("_rows")
    if rows is None:
        return None
    found = re.compile(pattern, re.IGNORECASE)
    return sum(int(r["calls"]) for r in rows if found.search(r["query"]))


def printable(counts: dict[str, Any]) -> dict[str, Any]:
    statements = counts.get("statements")
    if isinstance(statements, dict):
        statements.pop("_rows", None)
    return counts


# --- schedules ---------------------------------------------------------------------------


async def gather_limited(calls: list[Callable[[], Awaitable[Any]]], limit: int) -> list[Any]:
    """Run the calls, `limit` at a time; their results (or exceptions) in order."""
    results: list[Any] = [None] * len(calls)
    indices = iter(range(len(calls)))

    async def runner() -> None:
        for i in indices:  # shared iterator: each index is taken by one runner
            try:
                results[i] = await calls[i]()
            except GraphQLError as exc:
                results[i] = exc

    await asyncio.gather(*(runner() for _ in range(min(limit, len(calls)))))
    return results


async def create_schedules(client: Client, count: int, tag: str) -> list[str]:
    def one(i: int) -> Callable[[], Awaitable[Any]]:
        spec = {
            "name": f"{tag}-{i}",
            "everySeconds": 1,
            "task": {"echo": {"message": f"{tag} {i}"}},
        }
        return lambda: client.gql(CREATE_SCHEDULE, s=spec)

    results = await gather_limited([one(i) for i in range(count)], CLIENTS)
    ids = [r["createSchedule"]["id"] for r in results if isinstance(r, dict)]
    errors = [r for r in results if isinstance(r, Exception)]
    if errors:
        # the ones made are deleted by the caller; the first error says why the rest failed
        log(f"{len(errors)} of {count} createSchedule calls failed, e.g. {errors[0]}")
        raise errors[0]
    return ids


async def delete_schedules(client: Client, conn: asyncpg.Connection, ids: list[str]) -> int:
    """deleteSchedule each; whatever is left (a failed call) is deleted in SQL, so that no
    schedule goes on firing into the next scenario. Returns how many needed SQL."""
    if not ids:
        return 0

    def one(schedule_id: str) -> Callable[[], Awaitable[Any]]:
        return lambda: client.gql(DELETE_SCHEDULE, id=schedule_id)

    await gather_limited([one(i) for i in ids], CLIENTS)
    uuids = [uuid.UUID(i) for i in ids]
    left = await conn.fetch(Q_LEFT, uuids)
    if left:
        log(f"{len(left)} schedules were not deleted through GraphQL: deleting them in SQL")
        await conn.execute(Q_DELETE, uuids)
    return len(left)


async def wait_until(deadline_wall: float) -> None:
    delay = deadline_wall - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def schedules_scenario(
    args: argparse.Namespace,
    client: Client,
    conn: asyncpg.Connection,
    meter: Meter,
    counts: Counts,
) -> tuple[dict[str, Any], bool]:
    tag = f"bench-{uuid.uuid4().hex[:8]}"
    seconds = args.seconds
    ids: list[str] = []
    result: dict[str, Any] = {"scenario": "schedules", "schedules": args.schedules}
    try:
        log(f"creating {args.schedules} schedules (everySeconds: 1, echo) as {tag}")
        began = time.monotonic()
        ids = await create_schedules(client, args.schedules, tag)
        result["create_seconds"] = round(time.monotonic() - began, 2)
        uuids = [uuid.UUID(i) for i in ids]
        last_created: datetime = await conn.fetchval(Q_CREATED, uuids)
        # every schedule's first tick is at most one interval after its creation
        t0 = last_created.timestamp() + 1.0
        t1 = t0 + seconds
        start = datetime.fromtimestamp(t0, last_created.tzinfo)
        end = datetime.fromtimestamp(t1, last_created.tzinfo)
        await wait_until(t0)
        await counts.reset()
        meter.start()
        log(f"watching {seconds} s of ticks")
        await wait_until(t1)
        fired_in_window = await conn.fetchval(Q_FIRED_IN, uuids, start, end)
        cpu = meter.stop(fired_in_window)
        measured = await counts.take(fired_in_window)
        expected = len(ids) * seconds
        # ticks up to t1 fire within ON_TIME_SECONDS, or are missed: wait that long at most
        grace = time.monotonic() + ON_TIME_SECONDS + 2
        while (fired := await conn.fetchval(Q_FIRED, uuids, start, end)) < expected:
            if time.monotonic() > grace:
                break
            await asyncio.sleep(0.1)
        skipped = await conn.fetchval(Q_SKIPPED, uuids)
    finally:
        log(f"deleting {len(ids)} schedules")
        began = time.monotonic()
        via_sql = await delete_schedules(client, conn, ids)
        result["delete_seconds"] = round(time.monotonic() - began, 2)
        result["deleted_in_sql"] = via_sql
    # every task the schedules fired, not only the window's, so that none is left running
    # into the next scenario
    began = time.monotonic()
    while (unfinished := await conn.fetchval(Q_UNFINISHED, uuids)) > 0:
        if time.monotonic() - began > args.timeout:
            break
        await asyncio.sleep(0.2)
    result["drain_after_delete_seconds"] = round(time.monotonic() - began, 2)
    rows = await conn.fetch(Q_TICKS, uuids, start, end)
    started_in_window = await conn.fetchval(Q_STARTED_IN, uuids, start, end)
    duplicates = await conn.fetchval(Q_DUPLICATES, uuids)
    per_schedule = Counter(r["schedule_id"] for r in rows)
    fire_late = [(r["created_at"] - r["scheduled_for"]).total_seconds() for r in rows]
    start_late = [
        (r["started_at"] - r["scheduled_for"]).total_seconds() for r in rows if r["started_at"]
    ]
    # fire_due's claim of due schedules, and every statement on the `schedule` table (the
    # claim, saving next_run_at, the next due time): what a tick adds to a submission
    rounds = calls_matching(measured, r"FOR UPDATE OF s SKIP LOCKED")
    on_schedule = calls_matching(measured, r"\bschedule\b")
    result.update(
        seconds=seconds,
        window={"from": start.isoformat(), "to": end.isoformat()},
        ticks={
            "expected": expected,
            "fired": fired,
            "read_back": len(rows),
            "missing": expected - len(rows),
            "schedules_short_of_ticks": sum(1 for i in uuids if per_schedule.get(i, 0) < seconds),
            "duplicates": duplicates,
            "skipped": skipped,
            "fired_in_window_by_created_at": fired_in_window,
            "started_in_window": started_in_window,
        },
        # ticks fired and tasks started a second over the window: when the second is below
        # the first, the workers cannot run what fires and start_lateness grows with time
        fired_per_s=round(fired_in_window / seconds, 1),
        started_per_s=round(started_in_window / seconds, 1),
        fire_lateness_ms=ms_stats(fire_late),
        start_lateness_ms=ms_stats(start_late),
        status=dict(Counter(r["status"] for r in rows)),
        unfinished_at_timeout=unfinished,
        cpu=cpu,
        **printable_counts(measured, rounds=rounds, schedule_statements=on_schedule),
    )
    ok = duplicates == 0 and len(rows) == expected and unfinished == 0
    return result, ok


def printable_counts(
    measured: dict[str, Any], *, rounds: int | None, schedule_statements: int | None
) -> dict[str, Any]:
    tasks = measured["tasks"]
    statements = measured["statements"]
    if "skipped" not in statements:
        statements["fire_rounds"] = rounds
        statements["ticks_per_round"] = per(tasks, rounds or 0, 1)
        statements["schedule_statements"] = schedule_statements
        statements["schedule_statements_per_tick"] = per(schedule_statements, tasks, 3)
    printable(measured)
    return {"statements": statements, "redis": measured["redis"]}


# --- concurrency -------------------------------------------------------------------------


@dataclass
class Drained:
    ids: list[uuid.UUID]
    rows: list[asyncpg.Record]
    max_running: int
    samples: int
    timed_out: bool
    submit_seconds: float


async def submit_and_drain(
    args: argparse.Namespace,
    client: Client,
    conn: asyncpg.Connection,
    key: str | None,
    limit: int | None,
) -> Drained:
    """Submit -n sleep tasks (with the key and limit, if any) and sample RUNNING until all
    are finished."""
    options: dict[str, Any] = {}
    if key is not None:
        options = {"concurrencyKey": key, "concurrencyLimit": limit}
    tasks = [
        {"task": {"sleep": {"seconds": args.sleep}}, "options": options} for _ in range(args.count)
    ]
    began = time.monotonic()
    batches = [tasks[i : i + BATCH] for i in range(0, len(tasks), BATCH)]
    answers = await asyncio.gather(*(client.gql(SUBMIT_BATCH, t=b) for b in batches))
    submit_seconds = time.monotonic() - began
    ids = [uuid.UUID(t["id"]) for a in answers for t in a["submitTasks"]]
    max_running = samples = 0
    deadline = time.monotonic() + args.timeout
    timed_out = False
    while True:
        sample = await conn.fetchrow(Q_SAMPLE, ids, "RUNNING", ["QUEUED", "RUNNING"])
        assert sample is not None  # an aggregate always answers one row
        running, unfinished = sample[0], sample[1]
        samples += 1
        max_running = max(max_running, running)
        if unfinished == 0:
            break
        if time.monotonic() > deadline:
            timed_out = True
            break
        await asyncio.sleep(args.sample_ms / 1000)
    rows = await conn.fetch(Q_TASKS, ids)
    return Drained(ids, rows, max_running, samples, timed_out, submit_seconds)


def max_overlap(rows: list[asyncpg.Record]) -> int:
    """The most tasks whose [started_at, finished_at] overlap (an end before a start at the
    same instant)."""
    points = []
    for r in rows:
        if r["started_at"] and r["finished_at"]:
            points += [(r["started_at"], 1), (r["finished_at"], -1)]
    most = now = 0
    for _, step in sorted(points, key=lambda p: (p[0], p[1])):
        now += step
        most = max(most, now)
    return most


def slot_latencies(rows: list[asyncpg.Record], limit: int) -> tuple[list[float], int]:
    """For each start after the first `limit`: start - the latest finish before it. Also how
    many such starts had no finish before them (over the limit, or clocks apart)."""
    starts = sorted(r["started_at"] for r in rows if r["started_at"])
    finishes = sorted(r["finished_at"] for r in rows if r["finished_at"])
    gaps: list[float] = []
    orphans = 0
    j = 0
    for s in starts[limit:]:
        while j < len(finishes) and finishes[j] <= s:
            j += 1
        if j == 0:
            orphans += 1
            continue
        gaps.append((s - finishes[j - 1]).total_seconds())
    return gaps, orphans


def drain_report(d: Drained, args: argparse.Namespace, limit: int | None) -> dict[str, Any]:
    created = [r["created_at"] for r in d.rows]
    finished = [r["finished_at"] for r in d.rows if r["finished_at"]]
    drain = (max(finished) - min(created)).total_seconds() if finished and created else None
    out: dict[str, Any] = {
        "n": len(d.ids),
        "submit_seconds": round(d.submit_seconds, 3),
        "drain_seconds": round(drain, 3) if drain is not None else None,
        "status": dict(Counter(r["status"] for r in d.rows)),
        "attempts_max": max((r["attempts"] for r in d.rows), default=None),
        "max_running_sampled": d.max_running,
        "samples": d.samples,
        "max_running_overlap": max_overlap(d.rows),
        "timed_out": d.timed_out,
    }
    if limit is not None:
        ideal = len(d.ids) * args.sleep / limit
        out["ideal_drain_seconds"] = round(ideal, 3)
        out["drain_over_ideal"] = round(drain / ideal, 2) if drain else None
    return out


async def concurrency_scenario(
    args: argparse.Namespace,
    client: Client,
    conn: asyncpg.Connection,
    meter: Meter,
    counts: Counts,
) -> tuple[dict[str, Any], bool]:
    tag = uuid.uuid4().hex[:8]
    runs: list[tuple[str, str | None, int | None]] = [
        ("no-key", None, None),
        ("key-never-full", f"bench-wide-{tag}", args.count),
        ("limited", f"bench-{tag}", args.limit),
    ]
    result: dict[str, Any] = {
        "scenario": "concurrency",
        "n": args.count,
        "sleep_seconds": args.sleep,
        "limit": args.limit,
        "runs": {},
    }
    ok = True
    statement_totals: dict[str, float | None] = {}
    redis_totals: dict[str, float | None] = {}
    take_slot: dict[str, int | None] = {}
    for name, key, limit in runs:
        log(f"{name}: {args.count} sleep {args.sleep}s tasks (key {key}, limit {limit})")
        await counts.reset()
        meter.start()
        drained = await submit_and_drain(args, client, conn, key, limit)
        cpu = meter.stop(len(drained.ids))
        measured = await counts.take(len(drained.ids))
        take_slot[name] = calls_matching(measured, r"taskrunner_take_slot")
        release = calls_matching(measured, r"taskrunner_release_slots")
        report = drain_report(drained, args, limit)
        statements = measured["statements"]
        if "skipped" not in statements:
            statements["take_slot_calls"] = take_slot[name]
            statements["release_slots_calls"] = release
        statement_totals[name] = statements.get("per_task")
        redis_totals[name] = measured["redis"]["per_task"]
        report.update(cpu=cpu, **printable(measured))
        ok = ok and not drained.timed_out and report["status"] == {"SUCCEEDED": len(drained.ids)}
        if name == "limited":
            gaps, orphans = slot_latencies(drained.rows, args.limit)
            report["slot_start_latency_ms"] = ms_stats(gaps)
            report["starts_without_a_finish_before"] = orphans
            result.update(
                slot_start_latency_ms=report["slot_start_latency_ms"],
                drain_seconds=report["drain_seconds"],
                ideal_drain_seconds=report["ideal_drain_seconds"],
                max_running_sampled=report["max_running_sampled"],
                max_running_overlap=report["max_running_overlap"],
            )
            over = max(report["max_running_sampled"], report["max_running_overlap"])
            ok = ok and over <= args.limit and orphans == 0
        result["runs"][name] = report

    def diff(values: dict[str, float | None], a: str, b: str) -> float | None:
        x, y = values.get(a), values.get(b)
        return round(x - y, 2) if x is not None and y is not None else None

    result["extra_per_task"] = {
        "statements_check": diff(statement_totals, "key-never-full", "no-key"),
        "statements_waiting": diff(statement_totals, "limited", "key-never-full"),
        "redis_commands_check": diff(redis_totals, "key-never-full", "no-key"),
        "redis_commands_waiting": diff(redis_totals, "limited", "key-never-full"),
        "note": (
            "statements_check: a start with a key that has a free slot, against one without "
            "a key; statements_waiting: what a held-back task adds (its refused start, the "
            "release, a second delivery and start)"
        ),
    }
    return result, ok


# --- main --------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> int:
    conn = await asyncpg.connect(pg_url(args.database_url))
    redis = Redis.from_url(args.redis_url)
    counts = Counts(conn, redis)
    try:
        groups = await stack_pids(conn, redis, args.api_pid, args.worker_pids)
        meter = Meter(groups)
        await counts.setup()
        if counts.skipped:
            log(f"statements: {counts.skipped}")
        async with Client(args.url, args.api_key, connections=CLIENTS + 2) as client:
            scenario = schedules_scenario if args.scenario == "schedules" else concurrency_scenario
            result, ok = await scenario(args, client, conn, meter, counts)
    finally:
        await counts.restore()
        await conn.close()
        await redis.aclose()
    result["processes"] = {k: v for k, v in groups.items()}
    result["ok"] = ok
    print(orjson.dumps(result).decode())
    if not ok:
        log(
            "a check failed: see the JSON (duplicates, missing ticks, RUNNING over the limit, "
            "unfinished tasks)"
        )
        return 2
    return 0


def stack_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a script run against a stack (bench/run.py passes them all): its
    GraphQL URL and key, its PostgreSQL and Redis, and its processes for their CPU."""
    parser.add_argument("--url", default="http://127.0.0.1:8000/graphql")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("TASKRUNNER_API_KEY"),
        help="sent as `Authorization: Bearer KEY` (default: $TASKRUNNER_API_KEY)",
    )
    parser.add_argument(
        "--database-url", default=os.environ.get("DATABASE_URL"), help="default $DATABASE_URL"
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL"), help="default $REDIS_URL"
    )
    parser.add_argument("--api-pid", type=int, help="the api process, for its CPU")
    parser.add_argument(
        "--worker-pids",
        type=lambda s: [int(p) for p in s.split(",") if p.strip()],
        default=[],
        help="comma-separated worker processes, for their CPU",
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", choices=SCENARIOS, required=True)
    stack_arguments(parser)
    parser.add_argument("--schedules", type=int, default=1000, help="schedules (schedules)")
    parser.add_argument(
        "--seconds", type=int, default=20, help="seconds of ticks watched (schedules)"
    )
    parser.add_argument("-n", "--count", type=int, default=200, help="tasks (concurrency)")
    parser.add_argument("--sleep", type=float, default=0.05, help="task seconds (concurrency)")
    parser.add_argument("--limit", type=int, default=4, help="concurrencyLimit (concurrency)")
    parser.add_argument(
        "--sample-ms", type=float, default=5.0, help="RUNNING sampling period (concurrency)"
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for tasks to finish"
    )
    args = parser.parse_args()
    if not args.database_url or not args.redis_url:
        parser.error("--database-url and --redis-url are needed (or DATABASE_URL, REDIS_URL)")
    if min(args.schedules, args.seconds, args.count, args.limit) < 1:
        parser.error("--schedules, --seconds, -n and --limit must be at least 1")
    if args.sleep < 0 or args.sample_ms <= 0 or args.timeout <= 0 or math.isnan(args.sleep):
        parser.error("--sleep must be 0 or more, --sample-ms and --timeout positive")
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
