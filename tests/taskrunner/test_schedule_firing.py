"""One schedule that cannot fire (here: options stored in a shape no longer understood)
does not stop the others claimed with it: the round is redone one schedule at a time, and
the failing one gives up its due ticks (logged) instead of failing every round."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from arq import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import actors, cron, schedules
from taskrunner.submissions import Submission

T = actors.key("tester", "tester")  # the actor of the changes these tests make


def spec(name: str) -> schedules.ScheduleSpec:
    return schedules.ScheduleSpec(
        name=name,
        cadence=cron.cadence(None, 1, "UTC"),
        template=Submission("echo", {"message": name}, 60),
    )


async def test_a_schedule_that_cannot_fire_does_not_stop_the_others(
    engine: AsyncEngine, pool: ArqRedis
) -> None:
    owner = f"o-{uuid.uuid4().hex[:6]}"
    good = await schedules.create(
        engine, owner=owner, key_id=None, spec=spec("good"), most=10, actor=T
    )
    bad = await schedules.create(
        engine, owner=owner, key_id=None, spec=spec("bad"), most=10, actor=T
    )
    async with engine.begin() as conn:
        await conn.exec_driver_sql(
            "UPDATE schedule SET options = options || '{\"bogus\": 1}', "
            "next_run_at = clock_timestamp() - interval '10 ms' WHERE id = $1",
            (bad.id,),
        )
        await conn.exec_driver_sql(
            "UPDATE schedule SET next_run_at = clock_timestamp() WHERE id = $1", (good.id,)
        )
    before = datetime.now(UTC)
    fired, _ = await schedules.fire_due(engine, pool, None, most_catchup=10)
    assert fired >= 1
    after_good = await schedules.get(engine, scope=owner, schedule_id=good.id)
    after_bad = await schedules.get(engine, scope=owner, schedule_id=bad.id)
    assert after_good is not None and after_bad is not None
    assert after_good.last_task_id is not None  # it fired
    assert after_bad.last_task_id is None and after_bad.skipped == 1  # it gave up its tick
    assert after_bad.next_run_at is not None and after_bad.next_run_at > before
    # the next round is not stopped by it either
    fired_again, _ = await schedules.fire_due(engine, pool, None, most_catchup=10)
    assert fired_again >= 0
