"""The Celery app of bench/baseline_celery.py (Redis broker and result backend).

Configured from the environment at import, so the driver and the worker it starts agree:
BENCH_REDIS_URL, BENCH_QUEUE and BENCH_N (jobs of the throughput phase).
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery  # type: ignore[import-untyped]

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("BENCH_QUEUE", "bench-celery")
N = int(os.environ.get("BENCH_N", "0"))
DONE_KEY, FIRST_KEY, LAST_KEY, LAT_KEY = (f"{QUEUE}:{k}" for k in ("done", "first", "last", "lat"))

app = Celery("bench", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_default_queue=QUEUE,
    result_expires=600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_client: tuple[int, redis.Redis] | None = None


def client() -> redis.Redis:
    """A Redis client of this process (the prefork pool forks after import)."""
    global _client
    if _client is None or _client[0] != os.getpid():
        _client = (os.getpid(), redis.Redis.from_url(REDIS_URL))
    return _client[1]


@app.task(name="bench.noop")  # type: ignore[untyped-decorator]
def noop() -> None:
    started = time.time()
    r = client()
    done = int(r.incr(DONE_KEY))  # type: ignore[arg-type]
    if done == 1:
        r.set(FIRST_KEY, repr(started))
    if done == N:
        r.set(LAST_KEY, repr(time.time()))


@app.task(name="bench.lat")  # type: ignore[untyped-decorator]
def lat(enqueued_at: float) -> None:
    client().rpush(LAT_KEY, repr(time.time() - enqueued_at))
