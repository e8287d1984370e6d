"""Worker heartbeats in Redis: who is alive, since when, running what.

Each worker refreshes `taskrunner:worker:{id}` (JSON, expiring after a few intervals) and
is listed in the set `taskrunner:workers`. A worker whose key expired is dead: the
reconciler recovers the tasks PostgreSQL still shows it running, once they have been
suspected for a grace period (SUSPECTS, reconciler.due_orphans). A beat clears the
suspicion of the tasks it lists: a worker seen again is no longer suspect.

A worker whose heartbeats are not written (`Pulse`) takes no new task: others will soon
take it for dead and recover what it runs.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from pydantic import BaseModel
from redis import Redis as SyncRedis
from redis.asyncio import Redis

WORKERS_SET = "taskrunner:workers"
SUSPECTS = "taskrunner:orphan_suspects"  # hash: task id -> first found orphaned (Redis ms)
MISSED_BEATS = 5  # silent this many intervals: dead
STALE_BEATS = 3  # no heartbeat written for this many intervals: take no new task


def worker_key(worker_id: str) -> str:
    return f"taskrunner:worker:{worker_id}"


class WorkerInfo(BaseModel):
    id: str
    host: str
    pid: int
    started_at: datetime
    last_heartbeat_at: datetime
    running: list[uuid.UUID]
    queues: list[str] = ["default"]  # the named queues it serves
    memory_bytes: int | None = None  # resident memory: its own and its process tasks'


@dataclass
class Pulse:
    """A worker's own view of its heartbeats: whether the last one was written, and when
    one last was. Healthy until a beat fails or none was written for STALE_BEATS
    intervals (a beat that hangs)."""

    interval_seconds: float
    last_written: float = field(default_factory=time.monotonic)
    failing: bool = False

    def healthy(self) -> bool:
        age = time.monotonic() - self.last_written
        return not self.failing and age < STALE_BEATS * self.interval_seconds


def _add_beat(pipe: Any, info: WorkerInfo, interval_seconds: float) -> None:
    """Queue a heartbeat's commands on a pipeline (of either client)."""
    ttl_ms = int(interval_seconds * MISSED_BEATS * 1000)
    pipe.set(worker_key(info.id), orjson.dumps(info.model_dump(mode="json")), px=ttl_ms)
    pipe.sadd(WORKERS_SET, info.id)
    if info.running:
        pipe.hdel(SUSPECTS, *(str(task_id) for task_id in info.running))


@contextlib.contextmanager
def _noted(pulse: Pulse | None) -> Iterator[None]:
    """Note in `pulse` whether the beat written inside was written."""
    try:
        yield
    except BaseException:
        if pulse is not None:
            pulse.failing = True
        raise
    if pulse is not None:
        pulse.failing, pulse.last_written = False, time.monotonic()


async def beat(
    redis: Redis, info: WorkerInfo, interval_seconds: float, pulse: Pulse | None = None
) -> None:
    """Write the heartbeat (and clear the suspicion of the tasks it lists); `pulse` notes
    whether it was written."""
    with _noted(pulse):
        async with redis.pipeline(transaction=False) as pipe:
            _add_beat(pipe, info, interval_seconds)
            await pipe.execute()


def beat_sync(
    redis: SyncRedis, info: WorkerInfo, interval_seconds: float, pulse: Pulse | None = None
) -> None:
    """`beat` with a blocking client: what a worker's heartbeat thread writes, so that its
    beats go on while its event loop is blocked."""
    with _noted(pulse), redis.pipeline(transaction=False) as pipe:
        _add_beat(pipe, info, interval_seconds)
        pipe.execute()


async def leave(redis: Redis, worker_id: str) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.delete(worker_key(worker_id))
        pipe.srem(WORKERS_SET, worker_id)
        await pipe.execute()


async def live_workers(redis: Redis) -> list[WorkerInfo]:
    """Workers whose heartbeat has not expired; forgets the others."""
    members: set[bytes] = await redis.smembers(WORKERS_SET)  # type: ignore[misc]
    ids = sorted(m.decode() for m in members)
    if not ids:
        return []
    values = await redis.mget([worker_key(i) for i in ids])
    dead = [i for i, v in zip(ids, values, strict=True) if v is None]
    if dead:
        await redis.srem(WORKERS_SET, *dead)  # type: ignore[misc]
    return [WorkerInfo.model_validate(orjson.loads(v)) for v in values if v is not None]
