"""TASKS_PER_MINUTE per API key, held in Redis so that it binds across api replicas; and
the execution rate limits of task types (RATE_LIMIT, options.rateLimit), below.

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


# Execution rate limits: at most N starts of a bucket (a task type and its rate, see
# taskrunner.queue.bucket_of) in any period, across all workers. Each bucket has a log in
# Redis, `<QUEUE_NAME>:rate:<bucket>`, a sorted set of the claims of the last period (a
# moving window, on Redis' clock); a worker's claim script (workers.settings.CLAIM_JOBS)
# takes a token for each rated job it claims. A job over the limit is parked: taken out of
# its queue into `<QUEUE_NAME>:parked:<bucket>` (by its score, so it keeps its place), and
# the bucket noted in `<QUEUE_NAME>:ratewake` with the time its oldest claim leaves the
# window. The next claim after that time puts as many parked jobs back as there are free
# tokens, and every worker sleeps no longer than until then: no busy loop, and the jobs
# behind a parked backlog are read as if it were not there. A parked job is still QUEUED
# (no attempt used).
#
# The start that PostgreSQL records (Task.startedAt) comes a few ms (under load, a few
# hundred) after the claim, and not always as long after: the window is the period plus
# START_MARGIN_MS, so that N starts in any period hold as a user measures them, at a
# slightly lower rate (10/second: 10 in any 1.25 s at most).
START_MARGIN_MS = 250

# The bucket functions of both scripts below; they expect the locals `now` (ms, Redis'
# clock), `margin` (ms) and `rate_base` (QUEUE_NAME). Numbers go to Redis through '%.0f'.
BUCKETS_LUA = """
local buckets = {}
local function bucket(b)
  local st = buckets[b]
  if st == nil then
    local amount, period = string.match(b, '|(%d+)|(%d+)$')
    st = {log = rate_base .. ':rate:' .. b, amount = tonumber(amount),
          window = tonumber(period) + margin}
    redis.call('ZREMRANGEBYSCORE', st.log, '-inf', string.format('%.0f', now - st.window))
    st.n = redis.call('ZCARD', st.log)
    buckets[b] = st
  end
  return st
end
local function take(b, id)
  local st = bucket(b)
  if st.n >= st.amount then return false end
  st.n = st.n + 1
  redis.call('ZADD', st.log, string.format('%.0f', now), id .. '@' .. now)
  redis.call('PEXPIRE', st.log, st.window)
  return true
end
local function frees(b)
  local st = bucket(b)
  local oldest = redis.call('ZRANGE', st.log, 0, 0, 'WITHSCORES')
  if #oldest == 0 then return now + st.window end
  return tonumber(oldest[2]) + st.window
end
"""

# A token for one job, where no claim script runs (the arq CLI's Worker: the job's own
# function asks; ARGV: QUEUE_NAME, the margin, the job id): -1 if it may start (unrated,
# or its token taken), else the ms until its bucket's next token frees.
TAKE_START = f"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate_base, margin, id = ARGV[1], tonumber(ARGV[2]), ARGV[3]
{BUCKETS_LUA}
local b = redis.call('HGET', rate_base .. ':rated', id)
if not b then return -1 end
if take(b, id) then
  redis.call('HDEL', rate_base .. ':rated', id)
  return -1
end
return math.max(1, frees(b) - now)
"""


async def take_start(redis: Redis, base: str, job_id: str) -> int | None:
    """Take the job's start token (for the arq CLI's Worker): None when it may start, else
    the ms until a token of its bucket frees."""
    wait = int(await redis.register_script(TAKE_START)(args=[base, START_MARGIN_MS, job_id]))
    return None if wait < 0 else wait
