"""TASKS_PER_MINUTE per API key, held in Redis so that it binds across api replicas.

A moving window (the `limits` library's Redis strategy, one Lua script per check): at most
TASKS_PER_MINUTE tasks in any 60 seconds, a batch counting each of its tasks, all or none.
With Redis unreachable it lets submissions through (they are kept in PostgreSQL and
enqueued once Redis is back) rather than refusing work it cannot count.
"""

from __future__ import annotations

import logging
import math
import time

from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from taskrunner.errors import LimitExceeded, RateLimited

log = logging.getLogger(__name__)


class RateLimiter:
    def __init__(self, redis: Redis, tasks_per_minute: int) -> None:
        self.tasks_per_minute = tasks_per_minute
        self._item = RateLimitItemPerMinute(max(tasks_per_minute, 1), namespace="taskrunner")
        storage = RedisStorage(
            "async+redis://",
            implementation="redispy",
            connection_pool=redis.connection_pool,  # type: ignore[arg-type]  # documented
        )
        self._limiter = MovingWindowRateLimiter(storage)

    async def take(self, who: str, tasks: int) -> None:
        """Count `tasks` submissions of `who`, or raise RATE_LIMITED (nothing counted)."""
        limit = self.tasks_per_minute
        if limit == 0:
            return
        if tasks > limit:
            raise LimitExceeded(
                f"tasks: {tasks} tasks in one request are over TASKS_PER_MINUTE ({limit}); "
                "send at most that many per minute",
                field="tasks",
            )
        try:
            if await self._limiter.hit(self._item, "submit", who, cost=tasks):
                return
        except RedisError as exc:  # fail open: the submission itself lives in PostgreSQL
            log.warning("rate limiter unavailable (%s): letting %d tasks through", exc, tasks)
            return
        reset_at, _ = await self._limiter.get_window_stats(self._item, "submit", who)
        wait = max(1, math.ceil(reset_at - time.time()))
        raise RateLimited(
            f"over TASKS_PER_MINUTE ({limit} tasks a minute for this API key): retry in {wait}s",
            retry_after=wait,
        )
