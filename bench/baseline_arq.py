"""Baseline: raw arq throughput, worker CPU and start latency for no-op jobs (no API, no DB).

    .venv/bin/python bench/baseline_arq.py -n 10000 --max-jobs 100 --poll-delay 0.01
    .venv/bin/python bench/baseline_arq.py --redis-url redis://127.0.0.1:6379/0 --uvloop

Without --redis-url an EmbeddedRedis is started in a temp dir (and stopped at the end).

Phase 1 (throughput): N `noop` jobs are enqueued with `ArqRedis.enqueue_job` (--batch of them
concurrently on the pool) into a fresh queue, then ONE arq worker is started as a subprocess
(max_jobs=--max-jobs, poll_delay=--poll-delay, keep_result=0) and drains them. Every job does
one Redis INCR (how completions are counted); the job that makes the counter 1 records its start
time, the one that makes it N records its end time: drain_seconds is the difference.
Worker CPU (user+system, psutil) is sampled every --sample seconds while it drains; the CPU of
the drain is the difference between the last sample before the first job and the first sample
after the last one (startup CPU is reported separately as worker_cpu_seconds_total).

Phase 2 (start latency, skipped with --rate 0): `lat` jobs are enqueued at --rate per second for
--seconds; each pushes (its start time - the enqueue time passed as its argument) to a list.

Prints exactly one JSON document on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson
import psutil
import redis.asyncio as aioredis
from common import log, percentile

SCRIPT = Path(__file__).resolve()
BENCH_DIR = SCRIPT.parent
sys.path.insert(0, str(BENCH_DIR.parent))  # taskrunner, when run from a checkout


# ---------------------------------------------------------------------------------------------
# shared with baseline_celery.py


@contextlib.contextmanager
def redis_url_or_embedded(url: str | None) -> Iterator[str]:
    """`url`, or the URL of an EmbeddedRedis in a temp dir that lives as long as the block."""
    if url:
        yield url
        return
    from taskrunner.embedded import EmbeddedRedis

    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        server = EmbeddedRedis(Path(tmp))
        started = server.start()
        log(f"started embedded redis at {started}")
        try:
            yield started
        finally:
            server.stop()


def tree_cpu_seconds(proc: psutil.Process, children: bool) -> float:
    """user+system CPU of `proc` (and, with `children`, of its live descendants)."""
    procs = [proc, *(proc.children(recursive=True) if children else [])]
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            total += t.user + t.system
    return total


@dataclass
class CpuSampler:
    """CPU samples of a worker (process tree), taken by the caller while it polls."""

    proc: psutil.Process
    children: bool
    samples: list[float] = field(default_factory=list)

    def sample(self) -> float:
        value = tree_cpu_seconds(self.proc, self.children)
        self.samples.append(value)
        return value


async def wait_drained(
    count: Callable[[], Awaitable[int]],
    n: int,
    sampler: CpuSampler,
    interval: float,
    limit_s: float,
    worker: subprocess.Popen[bytes],
) -> tuple[float, float, bool]:
    """Poll `count()` until it reaches n; return (cpu before the first job, cpu after the last
    one, finished)."""
    deadline = time.monotonic() + limit_s
    cpu_before = sampler.sample()
    last_log = time.monotonic()
    while True:
        done = await count()
        cpu = sampler.sample()
        if done == 0:
            cpu_before = cpu  # the worker has not finished a job yet: still starting up
        if done >= n:
            return cpu_before, cpu, True
        now = time.monotonic()
        if worker.poll() is not None:
            log(f"worker exited with {worker.returncode} after {done}/{n} jobs")
            return cpu_before, cpu, False
        if now >= deadline:
            log(f"timed out with {done}/{n} jobs done")
            return cpu_before, cpu, False
        if now - last_log >= 1.0:
            log(f"done {done}/{n}")
            last_log = now
        await asyncio.sleep(interval)


async def offered_rate(
    send: Callable[[float], Awaitable[None]], rate: float, seconds: float
) -> int:
    """Call send(enqueue_time) `rate` times a second for `seconds` on a fixed schedule."""
    total = max(1, round(rate * seconds))
    start = time.monotonic()
    for i in range(total):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await send(time.time())
    return total


async def collect_latencies(r: aioredis.Redis, key: str, total: int, limit_s: float) -> list[float]:
    """Wait (at most limit_s) for `total` entries in the list `key`; return them in ms, sorted."""
    deadline = time.monotonic() + limit_s
    while True:
        have = await cast(Awaitable[int], r.llen(key))
        if have >= total or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.05)
    values = await cast(Awaitable[list[bytes]], r.lrange(key, 0, -1))
    return sorted(float(v) * 1000 for v in values)


def spawn(cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a worker; its stdout goes to our stderr (stdout is for the JSON document)."""
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=sys.stderr, **kwargs)


def latency_report(latencies: list[float], offered: int, rate: float, cpu: float) -> dict[str, Any]:
    return {
        "rate": rate,
        "offered": offered,
        "samples": len(latencies),
        "p50_ms": percentile(latencies, 50, 2),
        "p95_ms": percentile(latencies, 95, 2),
        "p99_ms": percentile(latencies, 99, 2),
        "max_ms": round(latencies[-1], 2) if latencies else None,
        "worker_cpu_seconds": round(cpu, 3),
        "cpu_ms_per_task": round(cpu * 1000 / offered, 3),
    }


def stop_worker(worker: subprocess.Popen[bytes], sig_first: int = 15) -> None:
    if worker.poll() is None:
        worker.send_signal(sig_first)
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(5)


def common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", help="default: start an EmbeddedRedis in a temp dir")
    parser.add_argument("-n", "--count", type=int, default=10000, help="no-op jobs to drain")
    parser.add_argument("--rate", type=float, default=200.0, help="latency phase: jobs/s (0: skip)")
    parser.add_argument("--seconds", type=float, default=10.0, help="latency phase duration")
    parser.add_argument("--timeout", type=float, default=600.0, help="max seconds per phase")
    parser.add_argument("--sample", type=float, default=0.01, help="poll/CPU sample interval")


# ---------------------------------------------------------------------------------------------
# the arq worker (runs in the subprocess)


async def noop(ctx: dict[str, Any]) -> None:
    started = time.time()
    r = ctx["redis"]
    done = await r.incr(ctx["bench_done_key"])
    if done == 1:
        await r.set(ctx["bench_first_key"], repr(started))
    if done == ctx["bench_n"]:
        await r.set(ctx["bench_last_key"], repr(time.time()))


async def lat(ctx: dict[str, Any], enqueued_at: float) -> None:
    await ctx["redis"].rpush(ctx["bench_lat_key"], repr(time.time() - enqueued_at))


def keys(queue: str) -> dict[str, str]:
    return {
        "bench_done_key": f"{queue}:done",
        "bench_first_key": f"{queue}:first",
        "bench_last_key": f"{queue}:last",
        "bench_lat_key": f"{queue}:lat",
    }


def run_worker(args: argparse.Namespace) -> int:
    from arq.connections import RedisSettings
    from arq.worker import Worker, func

    loop: asyncio.AbstractEventLoop
    if args.uvloop:
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    worker = Worker(
        functions=[func(noop, name="noop"), func(lat, name="lat")],
        redis_settings=RedisSettings.from_dsn(args.redis_url),
        queue_name=args.queue,
        max_jobs=args.max_jobs,
        poll_delay=args.poll_delay,
        queue_read_limit=max(100, args.max_jobs * 4),  # as workers/settings.py
        keep_result=0,
        max_tries=1,
        ctx={"bench_n": args.count, **keys(args.queue)},
    )
    worker.run()
    return 0


# ---------------------------------------------------------------------------------------------
# the driver


async def enqueue_all(pool: Any, queue: str, n: int, batch: int) -> None:
    step = max(1, n // 10)
    for start in range(0, n, batch):
        size = min(batch, n - start)
        await asyncio.gather(*(pool.enqueue_job("noop", _queue_name=queue) for _ in range(size)))
        if (start + size) // step != start // step:
            log(f"enqueued {start + size}/{n}")


async def drive(args: argparse.Namespace, url: str) -> tuple[dict[str, Any], bool]:
    from arq import create_pool
    from arq.connections import RedisSettings

    queue = f"bench:arq:{uuid.uuid4().hex[:10]}"
    k = keys(queue)
    pool = await create_pool(RedisSettings.from_dsn(url))
    r = aioredis.Redis.from_url(url)
    worker: subprocess.Popen[bytes] | None = None
    try:
        log(f"enqueueing {args.count} noop jobs into {queue}")
        t0 = time.perf_counter()
        await enqueue_all(pool, queue, args.count, args.batch)
        enqueue_seconds = time.perf_counter() - t0

        cmd = [sys.executable, str(SCRIPT), "--worker", "--redis-url", url]
        cmd += ["--queue", queue, "-n", str(args.count), "--max-jobs", str(args.max_jobs)]
        cmd += ["--poll-delay", str(args.poll_delay)] + (["--uvloop"] if args.uvloop else [])
        worker = spawn(cmd)
        sampler = CpuSampler(psutil.Process(worker.pid), children=False)

        async def count() -> int:
            return int(await r.get(k["bench_done_key"]) or 0)

        cpu_before, cpu_after, finished = await wait_drained(
            count, args.count, sampler, args.sample, args.timeout, worker
        )
        first, last = await r.get(k["bench_first_key"]), await r.get(k["bench_last_key"])
        drain = float(last) - float(first) if first and last else None
        drain_cpu = cpu_after - cpu_before
        result: dict[str, Any] = {
            "system": "arq",
            "n": args.count,
            "max_jobs": args.max_jobs,
            "poll_delay": args.poll_delay,
            "uvloop": args.uvloop,
            "enqueue_seconds": round(enqueue_seconds, 3),
            "enqueue_per_s": round(args.count / enqueue_seconds, 1),
            "drain_seconds": round(drain, 3) if drain else None,
            "tasks_per_s": round(args.count / drain, 1) if drain else None,
            "worker_cpu_seconds": round(drain_cpu, 3),
            "cpu_ms_per_task": round(drain_cpu * 1000 / args.count, 3),
            "worker_cpu_seconds_total": round(cpu_after, 3),
            "completed": int(await r.get(k["bench_done_key"]) or 0),
            "finished": finished,
        }
        if finished and args.rate > 0:
            log(f"latency phase: {args.rate}/s for {args.seconds}s")
            cpu0 = sampler.sample()

            async def send(now: float) -> None:
                await pool.enqueue_job("lat", now, _queue_name=queue)

            offered = await offered_rate(send, args.rate, args.seconds)
            latencies = await collect_latencies(r, k["bench_lat_key"], offered, args.timeout)
            cpu = sampler.sample() - cpu0
            result["latency"] = latency_report(latencies, offered, args.rate, cpu)
            finished = len(latencies) == offered
        return result, finished
    finally:
        if worker is not None:
            stop_worker(worker)
        await r.delete(queue, *k.values())
        await r.aclose()
        await pool.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common_arguments(parser)
    parser.add_argument("--max-jobs", type=int, default=100, help="arq max_jobs")
    parser.add_argument("--poll-delay", type=float, default=0.01, help="arq poll_delay (s)")
    parser.add_argument("--batch", type=int, default=200, help="enqueue_job calls in flight")
    parser.add_argument("--uvloop", action="store_true", help="run the worker under uvloop")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--queue", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count < 1 or args.max_jobs < 1 or args.batch < 1:
        parser.error("-n, --max-jobs and --batch must be at least 1")
    if args.uvloop:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            parser.error("--uvloop: uvloop is not installed")
    if args.worker:
        return run_worker(args)
    with redis_url_or_embedded(args.redis_url) as url:
        result, finished = asyncio.run(drive(args, url))
    print(orjson.dumps(result).decode())
    return 0 if finished else 2


if __name__ == "__main__":
    sys.exit(main())
