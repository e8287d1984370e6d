"""Paused flags in Redis follow `queue_state`, and a stale write never undoes a newer one:
a worker's re-sync that read the table just before a pause must not delete the flag the
pause set after it."""

from __future__ import annotations

from datetime import timedelta

from arq import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import actors, queue, queues

T = actors.key("tester", "tester")  # the actor of the changes these tests make


async def test_a_stale_resync_does_not_undo_a_pause(engine: AsyncEngine, pool: ArqRedis) -> None:
    flag = queue.paused_key(queue.key(pool.default_queue_name, "stale"))
    await queues.set_paused(engine, pool, "stale", True, actor=T)
    assert await pool.exists(flag)
    async with engine.connect() as conn:
        row = (
            await conn.exec_driver_sql("SELECT changed_at FROM queue_state WHERE name = 'stale'")
        ).one()
    # what a re-sync that read the row before the pause would write: not paused, older
    await queues.write_flags(pool, [("stale", False, row.changed_at - timedelta(seconds=1))])
    assert await pool.exists(flag)
    # a re-sync of the current row keeps it; a resume (newer) clears it
    await queues.sync_paused(engine, pool)
    assert await pool.exists(flag)
    await queues.set_paused(engine, pool, "stale", False, actor=T)
    assert not await pool.exists(flag)
    # a flag lost with Redis comes back from the table
    await queues.set_paused(engine, pool, "stale", True, actor=T)
    await pool.delete(flag)
    await queues.sync_paused(engine, pool)
    assert await pool.exists(flag)
    await queues.set_paused(engine, pool, "stale", False, actor=T)
