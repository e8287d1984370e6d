"""arq worker configuration. `arq workers.settings.WorkerSettings` and `taskrunner worker`
both use it; the class is built from the environment on first access, not at import.

`taskrunner worker` runs `TaskWorker`, an arq Worker woken up by a message on
`queue.wake_channel` when a task is enqueued: it starts the task at once, yet polls an idle
queue only every WORKER_IDLE_POLL_SECONDS. The arq CLI runs arq's own Worker, which polls
every WORKER_POLL_DELAY_SECONDS: lower it there for a lower start latency, at some idle
CPU."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any, cast

from arq.constants import (
    abort_jobs_ss,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.utils import timestamp_ms, to_ms
from arq.worker import Function, Retry, Worker, func
from redis.commands.core import AsyncScript

from taskrunner import dag, heartbeats, metrics, queue, ratelimit, tracing
from taskrunner.artifacts.storage import make_store
from taskrunner.config import Settings, get_settings
from taskrunner.db import engine_for
from taskrunner.errors import ConfigError
from taskrunner.logs import configure_logging
from workers import background
from workers.catalog import TaskType, catalog, input_check, served_queues
from workers.memory import MemoryWatchdog
from workers.processes import ProcessPool
from workers.runner import after_held_back, execute
from workers.task_context import install_log_capture
from workers.worker_context import WorkerContext

# arq's own job timeout is only a backstop behind each task's timeout.
ARQ_TIMEOUT_MARGIN_SECONDS = 30
log = logging.getLogger(__name__)


PAUSED_RECHECK_SECONDS = 1.0


def arq_function(
    task_type: TaskType, paused_flag: str | None = None, rates_base: str | None = None
) -> Function:
    """The arq function that runs `task_type`'s tasks (named for the type: the job name).
    For arq's own Worker (the arq CLI), which claims jobs without CLAIM_JOBS:
    `paused_flag`: while the queue's paused flag is set, the job goes back to the queue
    (arq's Retry, no attempt of the task used) and is looked at again a second later;
    `rates_base` (QUEUE_NAME): a rated job takes its start token here, and without one
    goes back to the queue until the token frees (arq's Retry puts its score then: no busy
    loop, but it loses its place and counts one of arq's tries; `taskrunner worker` keeps
    its place)."""

    async def job(
        ctx: dict[str, Any], task_id: str, limited: bool = False, rated: bool = False
    ) -> str:
        if paused_flag is not None and await ctx["redis"].exists(paused_flag):
            raise Retry(defer=PAUSED_RECHECK_SECONDS)
        if rated and rates_base is not None:
            wait_ms = await ratelimit.take_start(ctx["redis"], rates_base, task_id)
            if wait_ms is not None:
                raise Retry(defer=wait_ms / 1000)
        return await execute(cast(WorkerContext, ctx), task_type, task_id, limited)

    job.__qualname__ = f"run_{task_type.name}"
    return func(job, name=task_type.name, max_tries=1000)


async def _startup(settings: Settings, served: list[str], ctx: dict[str, Any]) -> None:
    ctx["settings"] = settings
    ctx["queues"] = served
    dag.check_bound_inputs(input_check(settings))  # the steps its tasks' ends make ready
    # arq made its pool with the worker's own queue (the first it serves) as the default;
    # every key of taskrunner.queue is built from QUEUE_NAME, the `default` queue's (a
    # worker on `alpha` must enqueue a `default` task where `default` workers read)
    ctx["redis"].default_queue_name = settings.queue_name
    tracing.setup("taskrunner-worker", settings)
    ctx["engine"] = engine_for(settings, "worker")
    tracing.instrument_engine(ctx["engine"])
    ctx["store"] = make_store(settings)
    ctx["worker_id"] = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    ctx["started_at"] = datetime.now(UTC)
    ctx["running"] = {}
    ctx["cancel_requests"] = {}
    ctx["pulse"] = heartbeats.Pulse(settings.heartbeat_interval_seconds)
    install_log_capture()
    # The baseline of TASK_MAX_MEMORY_MB: the worker's memory once it is set up.
    ctx["memory"] = MemoryWatchdog(ctx["running"], settings.task_max_memory_mb)
    ctx["processes"] = ProcessPool(
        settings.worker_processes,
        settings.task_kill_grace_seconds,
        settings.task_max_memory_mb,
        settings.memory_check_interval_seconds,
    )
    ctx["background"] = background.start(cast(WorkerContext, ctx))
    ctx["metrics_port"] = metrics.serve_worker_metrics(settings.host, settings.worker_metrics_port)


async def _shutdown(ctx: dict[str, Any]) -> None:
    for task in ctx.get("background", ()):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if "worker_id" in ctx:
        with contextlib.suppress(Exception):
            await heartbeats.leave(ctx["redis"], ctx["worker_id"])
    processes = ctx.get("processes")
    if processes is not None:
        await processes.aclose()
    store = ctx.get("store")
    if store is not None:
        await store.aclose()
    engine = ctx.get("engine")
    if engine is not None:
        await engine.dispose()


# One poll: read the due jobs of the queues (KEYS, from the ARGV[6]th on, round the list:
# each poll starts at the next one, so a busy queue does not starve the others), skipping a
# paused one (its key .. ':paused' exists), in score order, 100 at a time and at most
# ARGV[4] a queue, and claim up to ARGV[3] that no worker runs yet by setting their
# in-progress key (ARGV[5] .. id, for ARGV[2] ms), as arq's WATCH/MULTI does one job at a
# time. Jobs other workers run stay in the queue until they end, so reading on past them
# matters. Rate limits (taskrunner.ratelimit; ARGV[7]: QUEUE_NAME, ARGV[8]: the margin,
# ARGV[9]: arq's job key prefix): first, parked jobs whose bucket has tokens again go back
# to their queues; then a rated job (listed in `<QUEUE_NAME>:rated`, looked up only while
# that hash has any) is claimed with a token of its bucket, or parked. Returns the ms until
# the next parked bucket is due (-1: none), then id, score, queue index (1-based) for each
# claimed job. (The in-progress, paused and rate keys are built here, not passed as KEYS:
# fine on one Redis, which is what arq supports.)
CLAIM_JOBS = (
    """
local claimed, limit, most = {}, tonumber(ARGV[3]), tonumber(ARGV[4])
local first = tonumber(ARGV[6])
local rate_base, margin, jobs = ARGV[7], tonumber(ARGV[8]), ARGV[9]
local rated, parked = rate_base .. ':rated', rate_base .. ':parked'
local wakes = rate_base .. ':ratewake'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
    + ratelimit.BUCKETS_LUA
    + """
local served = {}
for q = 1, #KEYS do served[KEYS[q]] = true end
for _, b in ipairs(redis.call('ZRANGEBYSCORE', wakes, '-inf', now, 'LIMIT', 0, 100)) do
  local st, held = bucket(b), parked .. ':' .. b
  local back = {}
  if st.n < st.amount then back = redis.call('ZPOPMIN', held, st.amount - st.n) end
  for j = 1, #back, 2 do
    local id = back[j]
    local q = redis.call('HGET', parked, id)
    redis.call('HDEL', parked, id)
    if q and redis.call('EXISTS', jobs .. id) == 1 then
      redis.call('ZADD', q, 'NX', back[j + 1], id)
      if not served[q] then redis.call('PUBLISH', 'taskrunner:wake:' .. q, '') end
    else
      redis.call('HDEL', rated, id)
    end
  end
  if redis.call('EXISTS', held) == 0 then
    redis.call('ZREM', wakes, b)
  else
    redis.call('ZADD', wakes, string.format('%.0f', frees(b)), b)
  end
end
local nrated = redis.call('HLEN', rated)
local function claim(id, score, q)
  claimed[#claimed + 1] = id
  claimed[#claimed + 1] = score
  claimed[#claimed + 1] = q
end
for n = 0, #KEYS - 1 do
  if #claimed >= 3 * limit then break end
  local q = (first - 1 + n) % #KEYS + 1
  if redis.call('EXISTS', KEYS[q] .. ':paused') == 0 then
    local offset = 0
    while #claimed < 3 * limit and offset < most do
      local ready = redis.call('ZRANGEBYSCORE', KEYS[q], '-inf', ARGV[1], 'WITHSCORES',
                               'LIMIT', offset, 100)
      local gone = 0
      for i = 1, #ready, 2 do
        if #claimed >= 3 * limit then break end
        local id = ready[i]
        local b = nrated > 0 and redis.call('HGET', rated, id)
        if not b then
          if redis.call('SET', ARGV[5] .. id, '1', 'PX', ARGV[2], 'NX') then
            claim(id, ready[i + 1], q)
          end
        elseif redis.call('EXISTS', ARGV[5] .. id) == 0 then
          if take(b, id) then
            redis.call('SET', ARGV[5] .. id, '1', 'PX', ARGV[2])
            redis.call('HDEL', rated, id)
            claim(id, ready[i + 1], q)
          else
            redis.call('ZREM', KEYS[q], id)
            redis.call('ZADD', parked .. ':' .. b, ready[i + 1], id)
            redis.call('HSET', parked, id, KEYS[q])
            local st = bucket(b)
            if st.free == nil then
              st.free = frees(b)
              redis.call('ZADD', wakes, string.format('%.0f', st.free), b)
            end
            gone = gone + 1
          end
        end
      end
      if #ready < 200 then break end
      offset = offset + 100 - gone
    end
  end
end
local due = redis.call('ZRANGE', wakes, 0, 0, 'WITHSCORES')
table.insert(claimed, 1, #due == 0 and -1 or math.max(0, tonumber(due[2]) - now))
return claimed
"""
)


class TaskWorker(Worker):
    """arq's Worker, woken up by enqueues instead of polling fast, claiming jobs in batches.

    After each poll of the queue it waits for whichever comes first: a wake-up message
    (something was enqueued), a job ending while the last poll left jobs waiting (it took
    as many as it had slots for), or `idle_poll_seconds` (jobs enqueued by other means, a
    lost message).

    While its heartbeats are not written (heartbeats.Pulse) it claims nothing: other
    workers will soon take it for dead and recover what it runs. It polls again each
    heartbeat interval meanwhile.

    arq polls the queue, then starts the jobs it read one at a time, four Redis round trips
    each; here one Lua script reads and claims every job there is a free slot for, with
    the same checks, atomically. (No burst mode and no arq-style abort: tasks are
    cancelled through the task's own cancel channel.)"""

    def __init__(
        self,
        *,
        idle_poll_seconds: float,
        queue_keys: list[str] | None = None,
        rates_base: str | None = None,
        **options: Any,
    ) -> None:
        self.idle_poll_seconds = idle_poll_seconds
        super().__init__(**{**options, "poll_delay": 0})
        # the sorted sets of the named queues it serves (queue_name: the first one's)
        self.queue_keys = queue_keys or [self.queue_name]
        # QUEUE_NAME, the base of the rate limits' keys (taskrunner.ratelimit)
        self.rates_base = rates_base or self.queue_keys[0]
        self._origin: dict[str, str] = {}  # job id -> its queue's key, if not queue_name
        self._next_queue = 0
        self._wake = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._claim: AsyncScript | None = None
        self._backlog = False  # the last poll claimed as many jobs as it had slots for
        self._paused = False  # no heartbeat written: claiming nothing
        self._token_at: float | None = None  # (monotonic) a parked rated job's token frees

    async def _poll_iteration(self) -> None:
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="worker-wake-listener")
        self._wake.clear()
        beating = self._beating()
        if self.allow_pick_jobs and self.job_counter < self.max_jobs and beating:
            await self._claim_jobs(self.max_jobs - self.job_counter)
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                task.result()  # as arq: errors of run_job itself surface here
        await self.heart_beat()
        wait = self.idle_poll_seconds
        if self._token_at is not None:  # parked jobs go back to their queue then
            left = self._token_at - time.monotonic()
            if left > 0:
                wait = min(wait, left)
            else:  # past, and no claim since (no free slot): the next claim says again
                self._token_at = None
        if not beating:
            wait = min(wait, self.ctx["pulse"].interval_seconds)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), wait)

    def _beating(self) -> bool:
        """Whether this worker's heartbeats are written (logged when that changes)."""
        pulse: heartbeats.Pulse | None = self.ctx.get("pulse")
        beating = pulse is None or pulse.healthy()
        if beating == self._paused:
            self._paused = not beating
            if self._paused:
                log.warning("heartbeats are not written: taking no new task until they are")
            else:
                log.warning("heartbeats are written again: taking tasks")
        return beating

    async def _claim_jobs(self, free: int) -> None:
        if self._claim is None:
            self._claim = self.pool.register_script(CLAIM_JOBS)  # sent by its SHA1 after
        self._next_queue = self._next_queue % len(self.queue_keys) + 1
        token_ms, *claimed = await self._claim(
            keys=self.queue_keys,
            args=[
                timestamp_ms(),
                int(self.in_progress_timeout_s * 1000),
                free,
                self.queue_read_limit,
                in_progress_key_prefix,
                self._next_queue,
                self.rates_base,
                ratelimit.START_MARGIN_MS,
                job_key_prefix,
            ],
        )
        token_ms = int(token_ms)
        self._token_at = None if token_ms < 0 else time.monotonic() + token_ms / 1000
        self._backlog = len(claimed) // 3 >= free
        for raw_id, score, index in zip(claimed[::3], claimed[1::3], claimed[2::3], strict=True):
            job_id = raw_id.decode()
            origin = self.queue_keys[int(index) - 1]
            if origin != self.queue_name:
                self._origin[job_id] = origin
            await self.sem.acquire()  # never waits: there is a free slot for each
            self.job_counter += 1
            task = self.loop.create_task(self.run_job(job_id, int(float(score))))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        """arq 0.28's finish_job, on the sorted set the job was claimed from (arq's uses
        `queue_name`, the first queue served): one MULTI, so that no retry or claim lands
        between the job's keys going and its entry leaving its queue."""
        origin = self._origin.pop(job_id, self.queue_name)
        in_progress = in_progress_key_prefix + job_id
        async with self.pool.pipeline(transaction=True) as tr:
            delete_keys = []
            if keep_in_progress is None:
                delete_keys.append(in_progress)
            else:
                tr.pexpire(in_progress, to_ms(keep_in_progress) or 0)
            if finish:
                if result_data:
                    expire = None if keep_result_forever else result_timeout_s
                    tr.set(result_key_prefix + job_id, result_data, px=to_ms(expire))
                delete_keys += [retry_key_prefix + job_id, job_key_prefix + job_id]
                tr.zrem(abort_jobs_ss, job_id)
                tr.zrem(origin, job_id)
            elif incr_score:
                tr.zincrby(origin, incr_score, job_id)
            if delete_keys:
                tr.delete(*delete_keys)
            await tr.execute()

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        """arq's, on the sorted set the job was claimed from (see finish_job)."""
        origin = self._origin.pop(job_id, self.queue_name)
        async with self.pool.pipeline(transaction=True) as tr:
            tr.delete(
                retry_key_prefix + job_id,
                in_progress_key_prefix + job_id,
                job_key_prefix + job_id,
            )
            tr.zrem(abort_jobs_ss, job_id)
            tr.zrem(origin, job_id)
            keep_result = self.keep_result_forever or self.keep_result_s > 0
            if result_data is not None and keep_result:
                expire = 0 if self.keep_result_forever else self.keep_result_s
                tr.set(result_key_prefix + job_id, result_data, px=to_ms(expire))
            await tr.execute()

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        if self._backlog:
            self._wake.set()

    async def _listen(self) -> None:
        """Set the wake-up event on every message of the queue's wake channel; reconnect
        after errors (polling covers the gap)."""
        while True:
            try:
                async with self.pool.pubsub() as pubsub:
                    await pubsub.subscribe(*(queue.wake_channel(k) for k in self.queue_keys))
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("wake-up listener lost Redis (%s); polling meanwhile", exc)
                await asyncio.sleep(self.idle_poll_seconds)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        await super().close()


def queue_keys(settings: Settings) -> list[str]:
    """The sorted sets of the named queues the worker serves (catalog.served_queues)."""
    return [queue.key(settings.queue_name, name) for name in served_queues(settings)]


def worker_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `arq.Worker` (also the attributes of WorkerSettings)."""
    return {
        "functions": [arq_function(t) for t in catalog().values()],
        "redis_settings": queue.redis_settings(settings.require_redis_url()),
        "queue_name": queue_keys(settings)[0],
        "on_startup": functools.partial(_startup, settings, served_queues(settings)),
        "on_shutdown": _shutdown,
        "after_job_end": after_held_back,
        "max_jobs": settings.worker_concurrency,
        "poll_delay": settings.worker_poll_delay_seconds,
        "queue_read_limit": max(1000, settings.worker_concurrency * 20),
        "job_timeout": settings.task_max_runtime_seconds + ARQ_TIMEOUT_MARGIN_SECONDS,
        "job_completion_wait": settings.worker_shutdown_grace_seconds,
        "keep_result": 0,
        "max_tries": 1000,
        "health_check_interval": 10,
    }


def task_worker(settings: Settings, **overrides: Any) -> TaskWorker:
    """The worker `taskrunner worker` runs: serving WORKER_QUEUES, woken up by enqueues."""
    options = {
        **worker_options(settings),
        "idle_poll_seconds": settings.worker_idle_poll_seconds,
        "queue_keys": queue_keys(settings),
        "rates_base": settings.queue_name,
        **overrides,
    }
    return TaskWorker(**options)


def __getattr__(name: str) -> Any:
    if name == "WorkerSettings":
        settings = get_settings()
        configure_logging(settings.log_level, settings.log_format)
        keep_our_logging_under_the_arq_cli()
        return type("WorkerSettings", (), arq_cli_options(settings))
    raise AttributeError(name)


def keep_our_logging_under_the_arq_cli() -> None:
    """The arq CLI reads WorkerSettings, then applies its default logging config (unless
    given --custom-log-dict), which gives the `arq` logger a handler of its own: each of
    its lines would print twice, once in arq's plain format. Under the CLI, its default
    becomes one that only sets arq's level (-v: DEBUG), so its lines go through ours."""
    cli = sys.modules.get("arq.cli")
    if cli is None:
        return

    def arq_levels_only(verbose: bool) -> dict[str, Any]:
        level = "DEBUG" if verbose else "INFO"
        return {
            "version": 1,
            "disable_existing_loggers": False,
            "loggers": {"arq": {"level": level}},
        }

    cli.default_log_config = arq_levels_only  # type: ignore[attr-defined]


def arq_cli_options(settings: Settings) -> dict[str, Any]:
    """WorkerSettings for the arq CLI, which runs arq's own Worker: it reads one queue, so
    WORKER_QUEUES names at most one there (unset: `default`)."""
    served = settings.queues() or [queue.DEFAULT_QUEUE]
    if len(served) > 1:
        raise ConfigError(
            f"WORKER_QUEUES: the arq CLI serves one queue per process (arq's Worker reads "
            f"one Redis key), got {settings.worker_queues!r}; run one `arq "
            "workers.settings.WorkerSettings` per queue with WORKER_QUEUES=<that queue>, "
            "or `taskrunner worker --queues a,b`, which serves several"
        )
    unserved = sorted({t.queue for t in catalog().values()} - set(served))
    if unserved:
        log.warning(
            "this arq worker serves the queue %s only; task types on %s need their own: "
            "WORKER_QUEUES=<queue> arq workers.settings.WorkerSettings",
            served[0],
            ", ".join(unserved),
        )
    options = worker_options(settings)
    options["queue_name"] = queue_key = queue.key(settings.queue_name, served[0])
    flag = queue.paused_key(queue_key)
    options["functions"] = [arq_function(t, flag, settings.queue_name) for t in catalog().values()]
    options["on_startup"] = functools.partial(_startup, settings, served)
    return options
