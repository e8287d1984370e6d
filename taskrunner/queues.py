"""Named queues: their state (paused or not, in `queue_state`), pausing and resuming them,
and what `queues` reports of each (tasks waiting and running, workers serving it).

PostgreSQL decides whether a queue is paused; Redis carries it to the workers as a flag
beside the queue's sorted set (`queue.paused_key`), which their claim reads. pauseQueue
writes the row, then the flag; a worker re-writes every flag from the table each heartbeat
interval (`sync_paused`). A task a worker took just before the flag was set still starts:
a pause stops what starts after it returns, and running tasks finish."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from arq import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import heartbeats, queue
from taskrunner.actors import Actor
from taskrunner.changes import json_text
from taskrunner.connections import connection
from taskrunner.logs import event

SET_PAUSED = """
INSERT INTO queue_state (name, paused, changed_at, changed_by)
VALUES ($1, $2, clock_timestamp(), $3::jsonb)
ON CONFLICT (name) DO UPDATE
SET paused = excluded.paused, changed_at = excluded.changed_at, changed_by = excluded.changed_by
RETURNING changed_at
"""

# Write paused flags, each only if its version (the row's changed_at, in microseconds) is
# not older than the one written last (kept at <flag>:at): a worker's re-sync that read
# the table before a pause must not delete the flag the pause set after it.
# KEYS: the flags; ARGV: '1' (paused) or '0', version, for each flag in turn.
WRITE_FLAGS = """
for i, flag in ipairs(KEYS) do
  local paused, version = ARGV[2 * i - 1], tonumber(ARGV[2 * i])
  local last = tonumber(redis.call('GET', flag .. ':at') or '0')
  if version >= last then
    redis.call('SET', flag .. ':at', ARGV[2 * i])
    if paused == '1' then
      redis.call('SET', flag, '1')
    else
      redis.call('DEL', flag)
    end
  end
end
return 0
"""


def _version(changed_at: datetime) -> str:
    return str(int(changed_at.timestamp() * 1_000_000))


async def write_flags(pool: ArqRedis, rows: list[tuple[str, bool, datetime]]) -> None:
    flags = [queue.paused_key(queue.key(pool.default_queue_name, name)) for name, _, _ in rows]
    args = [a for _, paused, at in rows for a in ("1" if paused else "0", _version(at))]
    await pool.eval(WRITE_FLAGS, len(flags), *flags, *args)  # type: ignore[misc]


async def set_paused(
    engine: AsyncEngine, pool: ArqRedis, name: str, paused: bool, *, actor: Actor
) -> None:
    """Pause (or resume) the named queue, by `actor`: the row first (it decides), then the
    flag the workers read; a resume wakes them up."""
    async with connection(engine) as conn:
        changed_at: datetime = await conn.fetchval(SET_PAUSED, name, paused, json_text(actor))
    await write_flags(pool, [(name, paused, changed_at)])
    if not paused:
        await pool.publish(queue.wake_channel(queue.key(pool.default_queue_name, name)), b"")
    # no event stream carries a queue's changes (`queues` shows its state): the log does
    event("queue_paused" if paused else "queue_resumed", queue=name, actor=actor)


async def sync_paused(engine: AsyncEngine, pool: ArqRedis) -> None:
    """Make the Redis flags say what `queue_state` says (never going back on a newer
    write: see WRITE_FLAGS)."""
    async with connection(engine) as conn:
        rows = await conn.fetch("SELECT name, paused, changed_at FROM queue_state")
    if rows:
        await write_flags(pool, [(r["name"], r["paused"], r["changed_at"]) for r in rows])


@dataclass(frozen=True)
class QueueInfo:
    name: str
    paused: bool
    queued: int
    running: int
    oldest_queued_at: datetime | None
    workers: int
    changed_at: datetime | None = None  # its last pause or resume, and by whom
    changed_by: Actor | None = None


# Per queue: tasks QUEUED and RUNNING (of `owner`, or all when null) and the oldest QUEUED
# one's creation, from the partial index of active tasks.
ACTIVE = """
SELECT queue,
       count(*) FILTER (WHERE status = 'QUEUED') AS queued,
       count(*) FILTER (WHERE status = 'RUNNING') AS running,
       min(created_at) FILTER (WHERE status = 'QUEUED') AS oldest
FROM task
WHERE status IN ('QUEUED', 'RUNNING') AND ($1::text IS NULL OR owner = $1)
GROUP BY queue
"""


async def describe(
    engine: AsyncEngine, pool: ArqRedis, owner: str | None, known: list[str]
) -> list[QueueInfo]:
    """Every queue that has tasks waiting or running (of `owner`; None: everyone's), is
    paused, is served by a live worker, or is in `known`; by name."""
    async with connection(engine) as conn:
        active = {r["queue"]: r for r in await conn.fetch(ACTIVE, owner)}
        states = {r["name"]: r for r in await conn.fetch("SELECT * FROM queue_state")}
    paused = {name: r["paused"] for name, r in states.items()}
    serving: dict[str, int] = {}
    for worker in await heartbeats.live_workers(pool):
        for name in worker.queues:
            serving[name] = serving.get(name, 0) + 1
    names = sorted({*active, *(n for n, p in paused.items() if p), *serving, *known})
    return [
        QueueInfo(
            name=name,
            paused=paused.get(name, False),
            queued=active[name]["queued"] if name in active else 0,
            running=active[name]["running"] if name in active else 0,
            oldest_queued_at=active[name]["oldest"] if name in active else None,
            workers=serving.get(name, 0),
            changed_at=states[name]["changed_at"] if name in states else None,
            changed_by=states[name]["changed_by"] if name in states else None,
        )
        for name in names
    ]


async def served(pool: ArqRedis) -> set[str]:
    """The queues live workers serve."""
    return {name for w in await heartbeats.live_workers(pool) for name in w.queues}
