"""Baseline: Celery throughput, worker CPU and start latency for no-op tasks (Redis broker and
Redis result backend), to compare with bench/baseline_arq.py.

    .venv/bin/python bench/baseline_celery.py -n 10000
    .venv/bin/python bench/baseline_celery.py --redis-url redis://127.0.0.1:6379/0 --concurrency 2

Without --redis-url an EmbeddedRedis is started in a temp dir (and stopped at the end).

Phase 1 (throughput): N `bench.noop` tasks are sent with `apply_async` (one producer) into a
fresh queue, then ONE worker (`python -m celery -A celery_app worker --pool prefork
--concurrency 2`, gossip/mingle/heartbeat off) is started as a subprocess and drains them.
Every task does one Redis INCR; the task that makes it 1 records its start time, the one that
makes it N its end time: drain_seconds is the difference, as in baseline_arq.py. Results are
stored in the Redis backend (Celery's default; arq's bench uses keep_result=0). Worker CPU is
that of the whole process tree (main process + pool children, psutil), sampled the same way.

Phase 2 (start latency, skipped with --rate 0): `bench.lat` tasks sent at --rate per second for
--seconds; each pushes (its start time - the send time passed as its argument) to a list.

Prints exactly one JSON document on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import psutil
import redis.asyncio as aioredis
from baseline_arq import (
    CpuSampler,
    collect_latencies,
    common_arguments,
    latency_report,
    offered_rate,
    redis_url_or_embedded,
    spawn,
    stop_worker,
    wait_drained,
)
from common import log

BENCH_DIR = Path(__file__).resolve().parent


async def drive(args: argparse.Namespace, url: str) -> tuple[dict[str, Any], bool]:
    queue = f"bench-celery-{uuid.uuid4().hex[:10]}"
    env = {**os.environ, "BENCH_REDIS_URL": url, "BENCH_QUEUE": queue, "BENCH_N": str(args.count)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH_DIR), env.get("PYTHONPATH")]))
    os.environ.update({k: env[k] for k in ("BENCH_REDIS_URL", "BENCH_QUEUE", "BENCH_N")})
    import celery  # type: ignore[import-untyped]
    import celery_app  # configured from the environment just set

    r = aioredis.Redis.from_url(url)
    worker: subprocess.Popen[bytes] | None = None
    try:
        log(f"sending {args.count} noop tasks to {queue}")
        step = max(1, args.count // 10)
        t0 = time.perf_counter()
        with celery_app.app.producer_or_acquire() as producer:
            for i in range(args.count):
                celery_app.noop.apply_async(producer=producer)
                if (i + 1) % step == 0:
                    log(f"sent {i + 1}/{args.count}")
        enqueue_seconds = time.perf_counter() - t0

        cmd = [sys.executable, "-m", "celery", "-A", "celery_app", "worker"]
        cmd += ["--pool", args.pool, "--concurrency", str(args.concurrency), "-Q", queue]
        cmd += ["--loglevel", "WARNING", "--without-gossip", "--without-mingle"]
        cmd += ["--without-heartbeat"]
        worker = spawn(cmd, env=env, cwd=BENCH_DIR)
        sampler = CpuSampler(psutil.Process(worker.pid), children=True)

        async def count() -> int:
            return int(await r.get(celery_app.DONE_KEY) or 0)

        cpu_before, cpu_after, finished = await wait_drained(
            count, args.count, sampler, args.sample, args.timeout, worker
        )
        first, last = await r.get(celery_app.FIRST_KEY), await r.get(celery_app.LAST_KEY)
        drain = float(last) - float(first) if first and last else None
        drain_cpu = cpu_after - cpu_before
        result: dict[str, Any] = {
            "system": "celery",
            "celery": celery.__version__,
            "n": args.count,
            "pool": args.pool,
            "concurrency": args.concurrency,
            "enqueue_seconds": round(enqueue_seconds, 3),
            "enqueue_per_s": round(args.count / enqueue_seconds, 1),
            "drain_seconds": round(drain, 3) if drain else None,
            "tasks_per_s": round(args.count / drain, 1) if drain else None,
            "worker_cpu_seconds": round(drain_cpu, 3),
            "cpu_ms_per_task": round(drain_cpu * 1000 / args.count, 3),
            "worker_cpu_seconds_total": round(cpu_after, 3),
            "completed": await count(),
            "finished": finished,
        }
        if finished and args.rate > 0:
            log(f"latency phase: {args.rate}/s for {args.seconds}s")
            cpu0 = sampler.sample()
            with celery_app.app.producer_or_acquire() as producer:

                async def send(now: float) -> None:
                    celery_app.lat.apply_async((now,), producer=producer)

                offered = await offered_rate(send, args.rate, args.seconds)
            latencies = await collect_latencies(r, celery_app.LAT_KEY, offered, args.timeout)
            cpu = sampler.sample() - cpu0
            result["latency"] = latency_report(latencies, offered, args.rate, cpu)
            finished = len(latencies) == offered
        return result, finished
    finally:
        if worker is not None:
            stop_worker(worker)
        keys = (celery_app.DONE_KEY, celery_app.FIRST_KEY, celery_app.LAST_KEY)
        await r.delete(queue, f"_kombu.binding.{queue}", *keys, celery_app.LAT_KEY)
        await r.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common_arguments(parser)
    parser.add_argument("--pool", default="prefork", help="celery worker --pool")
    parser.add_argument("--concurrency", type=int, default=2, help="celery worker --concurrency")
    args = parser.parse_args()
    if args.count < 1 or args.concurrency < 1:
        parser.error("-n and --concurrency must be at least 1")
    with redis_url_or_embedded(args.redis_url) as url:
        result, finished = asyncio.run(drive(args, url))
    print(orjson.dumps(result).decode())
    return 0 if finished else 2


if __name__ == "__main__":
    sys.exit(main())
