"""What a worker does besides running tasks: follow cancellations, beat its heartbeat,
enqueue tasks that became due, fail those past their deadline, watch its memory, POST
completion webhooks, run the hooks a dead worker left, and (one worker at a time)
reconcile, delete expired artifacts, finished tasks and workflows past TASK_RETENTION_DAYS,
and expired upload grants with their bytes.

Each loop survives errors (logged, retried next round): a Redis or PostgreSQL hiccup must
not take the worker down, and a later round repairs what an earlier one missed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import httpx
import sqlalchemy as sa
from redis import Redis as SyncRedis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import (
    concurrency,
    deadlines,
    heartbeats,
    queues,
    reconciler,
    retention,
    schedules,
    webhooks,
    workflows,
)
from taskrunner.artifacts.records import delete_expired
from taskrunner.artifacts.uploads import expire_uploads
from taskrunner.config import Settings
from taskrunner.events import CANCEL_CHANNEL, parse_cancel_message
from taskrunner.models import task_table
from taskrunner.ratelimit import RateLimiter
from workers import hooks
from workers.catalog import catalog
from workers.loopwatch import watch_loop
from workers.memory import process_rss
from workers.worker_context import WorkerContext, held

log = logging.getLogger(__name__)

CANCEL_MEMORY_SECONDS = 60.0
RECONCILE_LOCK = "taskrunner:reconciler"


def cancel_running(ctx: WorkerContext, task_id: uuid.UUID, attempt: int | None = None) -> bool:
    """Cancel the body of a task this worker runs (only that `attempt`, if given). When it
    does not run it (yet), remember the request for a while: it may be about to start."""
    running = ctx["running"].get(task_id)
    if running is not None and not running.body.done():
        if attempt is None or attempt == running.attempt:
            running.body.cancel()
            return True
        return False
    if attempt is not None:
        requests = ctx["cancel_requests"]
        now = time.monotonic()
        for stale in [k for k, at in requests.items() if now - at > CANCEL_MEMORY_SECONDS]:
            del requests[stale]
        requests[(task_id, attempt)] = now
    return False


async def watch_cancellations(ctx: WorkerContext) -> None:
    """Cancel bodies when asked on the cancel channel, and, in case a message was lost,
    whenever the table says a running task here has `cancel_requested`. Survives Redis
    and PostgreSQL errors: it reconnects and goes on."""
    every = ctx["settings"].stream_quiet_seconds
    while True:
        try:
            await _follow_cancel_channel(ctx, every)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("cancel watcher failed; restarting in %.1fs", every)
            await asyncio.sleep(every)


async def _follow_cancel_channel(ctx: WorkerContext, every: float) -> None:
    pubsub = ctx["redis"].pubsub()
    await pubsub.subscribe(CANCEL_CHANNEL)
    next_sweep = time.monotonic() + every
    try:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=every)
            if message is not None and message["type"] == "message":
                raw = message["data"]
                try:
                    task_id, attempt = parse_cancel_message(
                        raw.decode() if isinstance(raw, bytes) else str(raw)
                    )
                except ValueError:
                    log.warning("ignoring a malformed cancel message %r", raw)
                else:
                    cancel_running(ctx, task_id, attempt)
            if time.monotonic() >= next_sweep:
                await _sweep(ctx)
                next_sweep = time.monotonic() + every
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


async def _sweep(ctx: WorkerContext) -> None:
    running = [tid for tid, r in ctx["running"].items() if not r.body.done()]
    if not running:
        return
    t = task_table.c
    async with ctx["engine"].connect() as conn:
        flagged = await conn.scalars(
            sa.select(t.id).where(t.id.in_(running), t.cancel_requested.is_(True))
        )
        ids = list(flagged)
    for tid in ids:
        cancel_running(ctx, tid)


def worker_info(ctx: WorkerContext, started_at: datetime) -> heartbeats.WorkerInfo:
    return heartbeats.WorkerInfo(
        id=ctx["worker_id"],
        host=socket.gethostname(),
        pid=os.getpid(),
        started_at=started_at,
        last_heartbeat_at=datetime.now(UTC),
        running=held(ctx),  # also attempts whose final status is still being written
        queues=ctx["queues"],
        memory_bytes=process_rss() + ctx["processes"].rss(),
    )


def _info_from_thread(ctx: WorkerContext) -> heartbeats.WorkerInfo:
    """worker_info, read from another thread: the running set may change meanwhile."""
    for _ in range(10):
        try:
            return worker_info(ctx, ctx["started_at"])
        except RuntimeError:  # "dictionary changed size during iteration": read again
            continue
    return worker_info(ctx, ctx["started_at"])


async def beat_in_thread(ctx: WorkerContext) -> None:
    """Write the heartbeat every HEARTBEAT_INTERVAL_SECONDS from a thread with a client of
    its own, until cancelled: a task body that blocks the event loop for a few seconds
    (workers.loopwatch reports it) does not stop the beats, so the worker is not taken for
    dead and its tasks are not recovered under it. While beats fail, the worker takes no
    new task (`Pulse`, read by TaskWorker)."""
    interval = ctx["settings"].heartbeat_interval_seconds
    client = SyncRedis.from_url(
        ctx["settings"].require_redis_url(), socket_timeout=max(1.0, interval)
    )
    stop = threading.Event()

    def run() -> None:
        failing = False
        while True:
            try:
                heartbeats.beat_sync(client, _info_from_thread(ctx), interval, ctx["pulse"])
                failing = False
            except Exception as exc:
                if not failing:  # once per outage
                    log.warning("heartbeat failed (%s); retrying every %.1fs", exc, interval)
                failing = True
            if stop.wait(interval):
                return

    thread = threading.Thread(target=run, name="heartbeat", daemon=True)
    thread.start()
    try:
        await asyncio.Event().wait()  # until cancelled
    finally:
        stop.set()
        await asyncio.shield(asyncio.to_thread(thread.join, 5))
        client.close()


async def sync_paused(ctx: WorkerContext) -> None:
    """Write the paused flags of the queues (from PostgreSQL, which decides) into Redis,
    where claims read them: repairs a flag lost with Redis, or not written by a pauseQueue
    whose process died between the two."""
    await queues.sync_paused(ctx["engine"], ctx["redis"])


async def check_memory(ctx: WorkerContext) -> None:
    await ctx["memory"].check()


async def enqueue_due(ctx: WorkerContext) -> None:
    await reconciler.enqueue_due(ctx["engine"], ctx["redis"])


async def expire_deadlines(ctx: WorkerContext) -> None:
    """Fail the QUEUED tasks whose options.deadline passed (taskrunner.deadlines)."""
    await deadlines.expire(ctx["engine"], ctx["redis"], ctx["redis"])


async def reconcile(ctx: WorkerContext) -> None:
    """Runs on at most one worker per interval (a Redis lock that expires by itself). A task
    is recovered only once it has looked orphaned for a whole grace period, so a moment
    without heartbeats (Redis restarted or flushed) recovers nothing."""
    settings = ctx["settings"]
    lock_ms = int(settings.reconcile_interval_seconds * 1000 * 0.9)
    if not await ctx["redis"].set(RECONCILE_LOCK, ctx["worker_id"], px=lock_ms, nx=True):
        return
    lost = await reconciler.requeue_lost(
        ctx["engine"], ctx["redis"], grace_seconds=settings.reconcile_interval_seconds
    )
    live = {w.id: set(w.running) for w in await heartbeats.live_workers(ctx["redis"])}
    live[ctx["worker_id"]] = set(held(ctx))
    grace = settings.heartbeat_interval_seconds * heartbeats.MISSED_BEATS
    candidates = await reconciler.find_orphans(ctx["engine"], live, grace_seconds=grace)
    due = await reconciler.due_orphans(ctx["redis"], candidates, grace_seconds=grace)
    await concurrency.release_all(ctx["engine"], ctx["redis"])  # releases lost to a crash
    hooked = {name: t.hooks.keys() for name, t in catalog().items() if t.hooks}
    orphans = await reconciler.recover_orphans(ctx["engine"], ctx["redis"], due, hooked)
    settled = await workflows.repair(ctx["engine"], ctx["redis"])  # settlings lost
    if lost or orphans or settled:
        log.warning(
            "reconciler: re-enqueued %d lost tasks, recovered %d orphans, settled %d stalled "
            "workflows",
            lost,
            orphans,
            settled,
        )


RETENTION_LOCK = "taskrunner:retention"
RETENTION_EVERY_SECONDS = 600.0


async def apply_retention(ctx: WorkerContext) -> None:
    """One worker per round: delete artifacts past ARTIFACT_RETENTION_DAYS, then finished
    tasks and workflows past TASK_RETENTION_DAYS (taskrunner.retention, in batches). A
    round ends by the time its lock expires; the next one goes on from there."""
    lock_ms = int(RETENTION_EVERY_SECONDS * 1000 * 0.9)
    if not await ctx["redis"].set(RETENTION_LOCK, ctx["worker_id"], px=lock_ms, nx=True):
        return
    until = time.monotonic() + lock_ms / 1000 * 0.9
    settings = ctx["settings"]
    days = settings.artifact_retention_days
    while await delete_expired(ctx["engine"], ctx["store"], timedelta(days=days)):
        pass
    keep = settings.task_retention()
    if keep is None:
        return
    started = time.monotonic()
    done = await retention.purge(ctx["engine"], ctx["store"], keep, until=until)
    log.info(
        "retention: deleted %d finished tasks (%d events, %d artifacts) and %d workflows "
        "finished over %s days ago, in %d batches, %.1fs",
        done.tasks,
        done.events,
        done.artifacts,
        done.workflows,
        f"{settings.task_retention_days:g}",
        len(done.batches),
        time.monotonic() - started,
    )


UPLOADS_LOCK = "taskrunner:upload-expiry"


def upload_sweep_seconds(settings: Settings) -> float:
    """How often expired upload grants are looked for: a minute, or sooner when uploads
    live less long (at most half an ARTIFACT_UPLOAD_TTL_SECONDS late)."""
    return min(60.0, settings.artifact_upload_ttl_seconds / 2)


async def expire_artifact_uploads(ctx: WorkerContext) -> None:
    """Delete uploads granted and never completed, with their bytes; one worker per round."""
    lock_ms = int(upload_sweep_seconds(ctx["settings"]) * 1000 * 0.9)
    if not await ctx["redis"].set(UPLOADS_LOCK, ctx["worker_id"], px=lock_ms, nx=True):
        return
    while await expire_uploads(ctx["engine"], ctx["store"]):
        pass


async def fire_schedules(ctx: WorkerContext) -> None:
    """Fire due schedules, forever: right after a round that fired a full batch, else at
    the next due tick or after SCHEDULE_INTERVAL_SECONDS, whichever is sooner. Every worker
    runs it; the rows are claimed with SKIP LOCKED, so each tick fires once."""
    settings = ctx["settings"]
    limiter = RateLimiter(ctx["redis"], settings.tasks_per_minute)
    longest = settings.schedule_interval_seconds
    while True:
        try:
            fired, next_due = await schedules.fire_due(
                ctx["engine"],
                ctx["redis"],
                limiter,
                most_catchup=settings.schedule_max_catchup,
            )
            if fired >= schedules.BATCH:
                continue
            wait = schedules.seconds_until(next_due, longest)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("schedules failed; trying again in %.1fs", longest)
            wait = longest
        await asyncio.sleep(wait)


async def run_due_hooks(ctx: WorkerContext) -> None:
    """Run the hooks a dead worker left recorded (workers.hooks), of the types this one
    knows."""
    timeout = ctx["settings"].hook_timeout_seconds
    await hooks.run_due(ctx["engine"], timeout, lease_seconds=2 * timeout)


async def deliver_webhooks(ctx: WorkerContext) -> None:
    """POST due completion webhooks, forever: at most WEBHOOK_CONCURRENCY at once, each in a
    task of its own beside the arq job slots (a receiver that never answers holds none of
    them, only one of these until WEBHOOK_TIMEOUT_SECONDS). Every worker runs it; the rows
    are claimed under a lease, so each attempt is posted by one worker. At shutdown the
    unfinished claims are given back, due again at once."""
    settings, engine = ctx["settings"], ctx["engine"]
    poll = settings.webhook_poll_seconds
    posting: dict[asyncio.Task[None], uuid.UUID] = {}
    async with webhooks.client(settings) as http:
        try:
            while True:
                free = settings.webhook_concurrency - len(posting)
                try:
                    claimed = await webhooks.claim(engine, free, settings) if free else []
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("webhooks: claiming failed; trying again in %.1fs", poll)
                    claimed = []
                for c in claimed:
                    posting[asyncio.create_task(_deliver(engine, http, c, settings))] = c.token
                if posting:
                    done, _ = await asyncio.wait(
                        posting, timeout=poll, return_when=asyncio.FIRST_COMPLETED
                    )
                    for finished in done:
                        del posting[finished]
                    if done and len(claimed) == free:
                        continue  # slots free and maybe more due: claim at once
                else:
                    await asyncio.sleep(poll)
        finally:
            for task in posting:
                task.cancel()
            await asyncio.gather(*posting, return_exceptions=True)
            try:
                await asyncio.shield(webhooks.release(engine, list(set(posting.values()))))
            except Exception:  # their leases run out by themselves
                log.warning("webhooks: could not give back %d claims", len(posting))


async def _deliver(
    engine: AsyncEngine, http: httpx.AsyncClient, claimed: webhooks.Claimed, settings: Settings
) -> None:
    try:
        await webhooks.deliver(engine, http, claimed, settings)
    except asyncio.CancelledError:
        raise
    except Exception:  # PostgreSQL away: the lease runs out, the attempt is made again
        log.exception(
            "webhooks: delivery %s attempt %d failed", claimed.delivery_id, claimed.attempt
        )


async def every(seconds: float, step: Callable[[], Awaitable[None]], name: str) -> None:
    """Run `step` every `seconds` forever; an error is logged and the loop goes on."""
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; trying again in %.1fs", name, seconds)
        await asyncio.sleep(seconds)


def start(ctx: WorkerContext) -> list[asyncio.Task[None]]:
    """Start the background loops; the caller cancels them at shutdown."""
    s = ctx["settings"]
    loops = [
        (s.heartbeat_interval_seconds, sync_paused, "paused-queues"),
        (s.scheduler_interval_seconds, enqueue_due, "scheduler"),
        (s.scheduler_interval_seconds, expire_deadlines, "deadlines"),
        (s.memory_check_interval_seconds, check_memory, "memory"),
        (s.reconcile_interval_seconds, reconcile, "reconciler"),
        (s.reconcile_interval_seconds, run_due_hooks, "hooks"),
        (RETENTION_EVERY_SECONDS, apply_retention, "retention"),
        (upload_sweep_seconds(s), expire_artifact_uploads, "uploads"),
    ]
    tasks = [
        asyncio.create_task(every(sec, lambda fn=fn: fn(ctx), name), name=name)  # type: ignore[misc]
        for sec, fn, name in loops
    ]
    tasks.append(asyncio.create_task(beat_in_thread(ctx), name="heartbeat"))
    tasks.append(asyncio.create_task(watch_loop(s.worker_block_warn_seconds), name="loopwatch"))
    tasks.append(asyncio.create_task(watch_cancellations(ctx), name="cancellations"))
    tasks.append(asyncio.create_task(fire_schedules(ctx), name="schedules"))
    tasks.append(asyncio.create_task(deliver_webhooks(ctx), name="webhooks"))
    return tasks
