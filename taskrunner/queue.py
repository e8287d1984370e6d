"""The one module that knows arq: job ids, scores, enqueueing, removal, re-delivery.

arq only delivers; PostgreSQL decides (a worker re-reads the row before it runs anything).
arq reads its queue, a Redis sorted set, in score order among members whose score is not
in the future. We give every job a score in the past that encodes its priority: a higher
priority is an older score, and within one priority its place in time keeps FIFO order.
Tasks that must wait (runAt, retry backoff) wait in PostgreSQL and are enqueued when due.

Fair sharing (start-time fair queuing, done at enqueue): each owner has a virtual clock per
queue (`<queue>:vclock`, a hash owner -> ms, on Redis' clock). A job's place is max(now,
its owner's clock), and the clock then moves FAIR_SLICE_MS past it. An owner's burst of
10,000 is spread over 100 s of its own virtual time, so another owner's job enqueued a
second later is placed near now, ahead of all but the burst's first ~100: at one priority,
owners with waiting work take turns (one job each, round-robin in effect), and an owner
alone keeps FIFO order. The claim does not change: places ahead of now stay due because
the priority offset is one PRIORITY_STEP_MS (~3 years) larger than the priority alone
needs. A workflow step made ready keeps its workflow's place (`since_ms`) and still moves
its owner's clock, so an owner's steps are paid for by the owner's later jobs. Enqueueing
is one Lua script a batch (EVAL: it may share a pipeline with other commands, and never
meets NOSCRIPT after a Redis restart).

Rate-limited jobs (`Job.rate_limit`, the task's "N per K seconds") are registered at
enqueue in `<QUEUE_NAME>:rated` (job id -> its bucket, `bucket_of`); unrated jobs write
nothing there. How a start is held to its rate: `taskrunner.ratelimit`.

Named queues: each is its own sorted set, `<QUEUE_NAME>` for `default` and
`<QUEUE_NAME>:<name>` for the others, and workers read the sets of the queues they serve.
A paused queue has the key `<its set>:paused` (written from PostgreSQL's `queue_state`,
which decides); workers claim nothing from it meanwhile.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from arq import ArqRedis, create_pool
from arq.connections import RedisSettings
from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.jobs import serialize_job
from redis.asyncio.client import Pipeline

from taskrunner.rates import Rate, parse_rate

PRIORITY_MIN, PRIORITY_MAX = -1000, 1000
PRIORITY_STEP_MS = 10**11  # ~3 years: one priority level outranks any wait in the queue
FAIR_SLICE_MS = 10  # how far a job moves its owner's virtual clock (see the docstring)
JOB_EXPIRES_MS = 7 * 24 * 3600 * 1000  # a job still waiting after this is dropped by arq;
# the reconciler then enqueues it again from PostgreSQL


DEFAULT_QUEUE = "default"


@dataclass(frozen=True)
class Job:
    """A task to deliver: the arq function is the task type, its argument the id (and
    `limited`, for a task with a concurrency key: its start checks for a free slot).
    `owner` places it among its owner's jobs (fair sharing; None: at now, unaccounted);
    `rate_limit` is the task's rate ("N per K seconds", str(taskrunner.rates.Rate)), None
    for unlimited."""

    task_type: str
    task_id: uuid.UUID
    priority: int = 0
    queue: str = DEFAULT_QUEUE
    limited: bool = False
    # its place among jobs of its priority, in ms since the epoch (default: now, FIFO by
    # enqueue); a workflow step made ready keeps its workflow's, ahead of later submissions
    since_ms: int | None = None
    owner: str | None = None
    rate_limit: str | None = None


def job_of(task: Any) -> Job:
    """The job of a task row (a TaskRecord, or a row with type, id, priority, and maybe
    queue, concurrency_key, owner and rate_limit)."""
    return Job(
        task.type,
        task.id,
        task.priority,
        getattr(task, "queue", DEFAULT_QUEUE) or DEFAULT_QUEUE,
        getattr(task, "concurrency_key", None) is not None,
        owner=getattr(task, "owner", None),
        rate_limit=getattr(task, "rate_limit", None),
    )


def key(base: str, queue: str) -> str:
    """The Redis sorted set of the named `queue` (`base`: QUEUE_NAME, the default's)."""
    return base if queue == DEFAULT_QUEUE else f"{base}:{queue}"


def paused_key(queue_key: str) -> str:
    """Set while the queue is paused: workers claim nothing from it."""
    return f"{queue_key}:paused"


def vclock_key(queue_key: str) -> str:
    """The owners' virtual clocks on a queue (fair sharing): owner -> ms."""
    return f"{queue_key}:vclock"


def rated_key(base: str) -> str:
    """Rate-limited jobs not yet claimed: job id -> bucket (`bucket_of`)."""
    return f"{base}:rated"


def parked_key(base: str) -> str:
    """Rated jobs taken out of their queue until a token frees: job id -> its queue's key
    (each bucket's parked jobs, by score: `<base>:parked:<bucket>`)."""
    return f"{base}:parked"


def bucket_of(task_type: str, rate_limit: str) -> str:
    """The bucket whose starts a rated job counts in: its type and its rate, as
    `<type>|<amount>|<period ms>` (the Lua scripts read the last two)."""
    rate = _rate(rate_limit)
    return f"{task_type}|{rate.amount}|{rate.period_seconds * 1000}"


@functools.lru_cache(maxsize=256)
def _rate(text: str) -> Rate:
    return parse_rate(text)


def priority_offset(priority: int) -> int:
    """What a job's score takes off its place: a higher priority is read first, and even
    PRIORITY_MIN lies one step in the past, so that a place ahead of now (an owner's
    virtual clock) is due at once."""
    return (priority - PRIORITY_MIN + 1) * PRIORITY_STEP_MS


def score(priority: int, place_ms: int) -> int:
    """The job's score: lower for a higher priority (read first); <= now while its place
    is less than PRIORITY_STEP_MS ahead of now."""
    return place_ms - priority_offset(priority)


def redis_settings(redis_url: str) -> RedisSettings:
    return RedisSettings.from_dsn(redis_url)


async def connect(redis_url: str, queue_name: str) -> ArqRedis:
    """An arq pool (a redis-py client) whose default queue is `queue_name`."""
    pool: ArqRedis = await create_pool(redis_settings(redis_url), default_queue_name=queue_name)
    return pool


def wake_channel(queue_name: str) -> str:
    """Where enqueues announce themselves, so waiting workers poll at once."""
    return f"taskrunner:wake:{queue_name}"


async def enqueue(pool: ArqRedis, jobs: Sequence[Job]) -> None:
    """Enqueue jobs in one pipeline and wake the workers up. The job id is the task id and
    both writes are NX, so enqueueing a job that waits or runs already changes nothing."""
    if not jobs:
        return
    async with pool.pipeline(transaction=False) as pipe:
        add_enqueues(pipe, pool.default_queue_name, jobs)
        await pipe.execute()


# Enqueue a batch (KEYS[1]: the rated hash; ARGV: the job key prefix, its expiry ms,
# FAIR_SLICE_MS, then 7 per job: id, payload, queue key, priority offset, place ms or '',
# owner or '', bucket or ''). The job key and the queue entry are both NX as ever (a job
# that waits or runs already changes nothing); a job that enters its queue moves its
# owner's clock (Redis' time: one clock for every api and worker) and is registered if
# rated. Then one wake-up per queue. Numbers go to Redis through '%.0f' (Lua prints 14
# digits).
ENQUEUE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix, expires, slice = ARGV[1], ARGV[2], tonumber(ARGV[3])
local woken, clocks = {}, {}
for i = 4, #ARGV, 7 do
  local id, q, owner, bucket = ARGV[i], ARGV[i + 2], ARGV[i + 5], ARGV[i + 6]
  redis.call('SET', prefix .. id, ARGV[i + 1], 'PX', expires, 'NX')
  if not redis.call('ZSCORE', q, id) then
    local place = tonumber(ARGV[i + 4])
    if owner ~= '' then
      local ck = q .. ':vclock'
      local c = clocks[ck]
      if c == nil then c = {} clocks[ck] = c end
      local v = c[owner] or tonumber(redis.call('HGET', ck, owner)) or 0
      if place == nil then
        place = math.max(now, v)
        v = place
      else
        v = math.max(now, v)
      end
      c[owner] = v + slice
    end
    place = place or now
    redis.call('ZADD', q, string.format('%.0f', place - tonumber(ARGV[i + 3])), id)
    if bucket ~= '' then redis.call('HSET', KEYS[1], id, bucket) end
    woken[q] = true
  end
end
for ck, c in pairs(clocks) do
  for owner, v in pairs(c) do redis.call('HSET', ck, owner, string.format('%.0f', v)) end
  redis.call('PEXPIRE', ck, expires)
end
for q in pairs(woken) do redis.call('PUBLISH', 'taskrunner:wake:' .. q, '') end
return 0
"""


def add_enqueues(pipe: Pipeline, base: str, jobs: Sequence[Job]) -> None:
    """Queue `enqueue`'s one script on a pipeline (`base`: the default queue's key)."""
    if not jobs:
        return
    now = int(time.time() * 1000)
    args: list[Any] = [job_key_prefix, JOB_EXPIRES_MS, FAIR_SLICE_MS]
    for job in jobs:
        job_id = str(job.task_id)
        job_args: tuple[Any, ...] = (job_id, True) if job.limited else (job_id,)
        bucket = "" if job.rate_limit is None else bucket_of(job.task_type, job.rate_limit)
        # a rated job says so: the arq CLI's Worker, which has no claim script, takes its
        # token in the job's function (workers.settings.arq_function)
        kwargs = {"rated": True} if bucket else {}
        args += [
            job_id,
            serialize_job(job.task_type, job_args, kwargs, None, now),
            key(base, job.queue),
            priority_offset(job.priority),
            "" if job.since_ms is None else job.since_ms,
            job.owner or "",
            bucket,
        ]
    pipe.eval(ENQUEUE, 1, rated_key(base), *args)


async def redeliver(pool: ArqRedis, jobs: Sequence[Job]) -> None:
    """Enqueue jobs whose worker died: drop arq's in-progress marks first (arq itself would
    wait for its job timeout), then enqueue as usual."""
    if not jobs:
        return
    await pool.delete(*(in_progress_key_prefix + str(job.task_id) for job in jobs))
    await pool.delete(*(job_key_prefix + str(job.task_id) for job in jobs))
    await enqueue(pool, jobs)


async def missing(pool: ArqRedis, jobs: Sequence[Job]) -> list[Job]:
    """The jobs that Redis does not hold (lost, flushed) on their queue, nor parked until
    their rate limit's next token (taskrunner.ratelimit)."""
    if not jobs:
        return []
    parked = parked_key(pool.default_queue_name)
    async with pool.pipeline(transaction=False) as pipe:
        for job in jobs:
            pipe.exists(job_key_prefix + str(job.task_id))
            pipe.zscore(key(pool.default_queue_name, job.queue), str(job.task_id))
            pipe.hexists(parked, str(job.task_id))
        found = await pipe.execute()
    return [
        job
        for i, job in enumerate(jobs)
        if not found[3 * i] or (found[3 * i + 1] is None and not found[3 * i + 2])
    ]


async def remove_many(pool: ArqRedis, tasks: Sequence[tuple[uuid.UUID, str]]) -> None:
    """`remove` for many (task id, queue) pairs, in two round trips."""
    if not tasks:
        return
    async with pool.pipeline(transaction=False) as pipe:
        for task_id, _ in tasks:
            pipe.exists(in_progress_key_prefix + str(task_id))
        taken = await pipe.execute()
    async with pool.pipeline(transaction=False) as pipe:
        for (task_id, queue), busy in zip(tasks, taken, strict=True):
            if not busy:
                pipe.zrem(key(pool.default_queue_name, queue), str(task_id))
                pipe.delete(job_key_prefix + str(task_id))  # a parked job is dropped then
                pipe.hdel(rated_key(pool.default_queue_name), str(task_id))
        await pipe.execute()


async def remove(pool: ArqRedis, task_id: uuid.UUID, queue: str = DEFAULT_QUEUE) -> None:
    """Drop a waiting job (a cancelled task). A worker that already took it re-reads the
    row and skips it, so losing this race is harmless."""
    job_id = str(task_id)
    if await pool.exists(in_progress_key_prefix + job_id):
        return
    async with pool.pipeline(transaction=True) as pipe:
        pipe.zrem(key(pool.default_queue_name, queue), job_id)
        pipe.delete(job_key_prefix + job_id)  # a parked job is dropped then
        pipe.hdel(rated_key(pool.default_queue_name), job_id)
        await pipe.execute()
