"""Worker heartbeats in Redis: who is alive, since when, running what.

Each worker refreshes `taskrunner:worker:{id}` (JSON, expiring after a few intervals) and
is listed in the set `taskrunner:workers`. A worker whose key expired is dead: the
reconciler recovers the tasks PostgreSQL still shows it running.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import orjson
from pydantic import BaseModel
from redis.asyncio import Redis

WORKERS_SET = "taskrunner:workers"
MISSED_BEATS = 5  # silent this many intervals: dead


def worker_key(worker_id: str) -> str:
    return f"taskrunner:worker:{worker_id}"


class WorkerInfo(BaseModel):
    id: str
    host: str
    pid: int
    started_at: datetime
    last_heartbeat_at: datetime
    running: list[uuid.UUID]


async def beat(redis: Redis, info: WorkerInfo, interval_seconds: float) -> None:
    ttl_ms = int(interval_seconds * MISSED_BEATS * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(worker_key(info.id), orjson.dumps(info.model_dump(mode="json")), px=ttl_ms)
        pipe.sadd(WORKERS_SET, info.id)
        await pipe.execute()


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
