"""Schedules: a task spec fired on a cron expression or a fixed interval.

Truth is the `schedule` row and the tasks it fired. Every worker looks for due schedules
(`fire_due`); a due row is claimed with FOR UPDATE SKIP LOCKED, its ticks are fired as
tasks and its `next_run_at` moves on, in one transaction. A tick's task carries
`schedule_id` and `scheduled_for` (the tick), unique together, so a tick fires exactly one
task however many workers look and however they crash: a crash before the commit leaves
the row due for the next look, one after it is past the tick.

Ticks that were due while nothing looked (every worker down) follow the schedule's
`catchup`: the current tick (the latest one, if it is at most `ON_TIME_SECONDS` late)
always fires; of the missed ones before it NONE fires none, ONE the latest, ALL each (the
latest SCHEDULE_MAX_CATCHUP). With `overlap: SKIP` nothing fires while the task of the last
tick is unfinished: the skip is counted on the schedule and noted on that task (a
TickSkipped event, `transitions.tick_skipped`).

Fired tasks use the schedule's owner and count against the rate limit of the API key that
made it (TASKS_PER_MINUTE); a tick over that limit is skipped and counted as such.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
from arq import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import actors, cron, journal, paging, submissions, transitions
from taskrunner.actors import Actor
from taskrunner.changes import json_text
from taskrunner.connections import connection, transaction
from taskrunner.cron import Cadence
from taskrunner.errors import BadInput, LimitExceeded, NotFound, RateLimited
from taskrunner.logs import event
from taskrunner.models import TaskRecord
from taskrunner.ratelimit import RateLimiter
from taskrunner.submissions import Submission

log = logging.getLogger(__name__)

ON_TIME_SECONDS = 5.0  # a tick found this late still counts as the current one, not missed
BATCH = 100  # schedules claimed in one transaction
OVERLAP = ("ALLOW", "SKIP")
CATCHUP = ("NONE", "ONE", "ALL")


@dataclass(frozen=True)
class ScheduleSpec:
    """A validated createSchedule/updateSchedule input. `template` is the task each tick
    submits (its scheduled_for and schedule_id are set per tick)."""

    name: str
    cadence: Cadence
    template: Submission
    overlap: str = "ALLOW"
    catchup: str = "ONE"
    paused: bool = False


@dataclass(frozen=True)
class ScheduleRecord:
    """A `schedule` row as read."""

    id: uuid.UUID
    owner: str
    key_id: uuid.UUID | None
    name: str
    cron: str | None
    every_seconds: float | None
    timezone: str
    task_type: str
    task_input: dict[str, Any]
    options: dict[str, Any]
    overlap: str
    catchup: str
    paused: bool
    next_run_at: datetime | None
    last_run_at: datetime | None
    last_task_id: uuid.UUID | None
    skipped: int
    last_skipped_at: datetime | None
    created_at: datetime
    # who made it, and who changed it last (update, pause, resume) and when: actors
    created_by: dict[str, str] | None = None
    changed_by: dict[str, str] | None = None
    changed_at: datetime | None = None

    @classmethod
    def of(cls, row: Any) -> ScheduleRecord:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})

    @property
    def cadence(self) -> Cadence:
        return Cadence(self.cron, self.every_seconds, self.timezone)

    def submission(self, tick: datetime) -> Submission:
        """The task of one tick."""
        options = dict(self.options)
        options["labels"] = tuple(options.get("labels") or ())
        return Submission(
            type=self.task_type,
            input=self.task_input,
            scheduled_for=tick,
            schedule_id=self.id,
            key_id=self.key_id,
            **options,
        )


BY_SCHEDULE = actors.system(actors.System.SCHEDULE)  # a tick's task

# The template's fields stored in `options` (the rest: type, input; never per-tick ones).
OPTION_FIELDS = (
    "timeout_seconds",
    "priority",
    "max_retries",
    "labels",
    "queue",
    "concurrency_key",
    "concurrency_limit",
    "rate_limit",
    "webhook_url",
)


def _options(template: Submission) -> dict[str, Any]:
    values = asdict(template)
    options = {name: values[name] for name in OPTION_FIELDS}
    options["labels"] = list(template.labels)
    return options


def check_template(template: Submission, prefix: str = "schedule.options.") -> None:
    """Options a schedule cannot take: each tick is its own task, fired at its tick."""
    for name, given in (
        ("runAt", template.scheduled_for is not None),
        ("delaySeconds", template.delay_seconds is not None),
        ("idempotencyKey", template.idempotency_key is not None),
        ("deadline", template.deadline is not None),
    ):
        if given:
            raise BadInput(
                f"{prefix}{name}: a schedule fires one task per tick, at its tick; leave "
                f"{name} out (each task carries scheduleId and scheduledFor instead)",
                field=f"{prefix}{name}",
            )


COLUMNS = ", ".join(ScheduleRecord.__dataclass_fields__)
# The columns a ScheduleSpec sets, in the order of `_spec_values`.
SPEC_COLUMNS = (
    "name, cron, every_seconds, timezone, task_type, task_input, options, overlap, catchup, paused"
)


def _spec_values(spec: ScheduleSpec) -> tuple[Any, ...]:
    return (
        spec.name,
        spec.cadence.cron,
        spec.cadence.every_seconds,
        spec.cadence.timezone,
        spec.template.type,
        json_text(spec.template.input),
        json_text(_options(spec.template)),
        spec.overlap,
        spec.catchup,
        spec.paused,
    )


def _first_tick(cadence: Cadence, now: datetime, anchor: datetime) -> datetime:
    return cron.next_tick(cadence, now, anchor)


LAST_TICK = "SELECT max(scheduled_for) FROM task WHERE schedule_id = $1"


async def _next_after_now(
    conn: asyncpg.Connection, s: ScheduleRecord, cadence: Cadence, now: datetime
) -> datetime:
    """The next tick after now and after the last tick it fired (a clock that stepped back
    must not make it fire a tick twice: ticks are unique per schedule)."""
    last: datetime | None = await conn.fetchval(LAST_TICK, s.id)
    return _first_tick(cadence, max(now, last) if last else now, s.created_at)


async def create(
    engine: AsyncEngine,
    *,
    owner: str,
    key_id: uuid.UUID | None,
    spec: ScheduleSpec,
    most: int,
    actor: Actor,
) -> ScheduleRecord:
    """Store a new schedule, made by `actor`; at most `most` (MAX_SCHEDULES_PER_OWNER) per
    owner."""
    check_template(spec.template)
    async with transaction(engine) as conn:
        # one owner's creations queue up here, so two at once cannot both pass the bound
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 11))", owner)
        count = await conn.fetchval("SELECT count(*) FROM schedule WHERE owner = $1", owner)
        if count >= most:
            raise LimitExceeded(
                f"schedule: you have {count} schedules, the most MAX_SCHEDULES_PER_OWNER "
                f"({most}) allows; delete one first (deleteSchedule)",
                field="schedule",
            )
        now: datetime = await conn.fetchval("SELECT clock_timestamp()")
        row = await conn.fetchrow(
            f"""INSERT INTO schedule (id, owner, key_id, {SPEC_COLUMNS}, next_run_at, created_at,
                                      created_by)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10::jsonb, $11, $12, $13,
                        $14, $15, $16::jsonb)
                RETURNING {COLUMNS}""",
            uuid.uuid4(),
            owner,
            key_id,
            *_spec_values(spec),
            _first_tick(spec.cadence, now, now),
            now,
            json_text(actor),
        )
    return ScheduleRecord.of(row)


async def update(
    engine: AsyncEngine,
    *,
    scope: str | None,
    schedule_id: uuid.UUID,
    spec: ScheduleSpec,
    actor: Actor,
) -> ScheduleRecord:
    """Replace a schedule's definition; its next tick is computed again from now (its
    fired tasks and counts stay)."""
    check_template(spec.template)
    async with transaction(engine) as conn:
        current = await _locked(conn, scope, schedule_id)
        now: datetime = await conn.fetchval("SELECT clock_timestamp()")
        row = await conn.fetchrow(
            f"""UPDATE schedule SET ({SPEC_COLUMNS}, next_run_at, changed_by, changed_at)
                    = ($2, $3, $4, $5, $6, $7::jsonb, $8::jsonb, $9, $10, $11, $12,
                       $13::jsonb, $14)
                WHERE id = $1 RETURNING {COLUMNS}""",
            schedule_id,
            *_spec_values(spec),
            await _next_after_now(conn, current, spec.cadence, now),
            json_text(actor),
            now,
        )
    return ScheduleRecord.of(row)


async def set_paused(
    engine: AsyncEngine,
    *,
    scope: str | None,
    schedule_id: uuid.UUID,
    paused: bool,
    actor: Actor,
) -> ScheduleRecord:
    """Pause (no tick fires) or resume (the next tick from now on fires: ticks that fell
    while paused are not missed ticks, and never fire)."""
    async with transaction(engine) as conn:
        current = await _locked(conn, scope, schedule_id)
        now: datetime = await conn.fetchval("SELECT clock_timestamp()")
        next_run = current.next_run_at
        if not paused and current.paused:
            next_run = await _next_after_now(conn, current, current.cadence, now)
        row = await conn.fetchrow(
            "UPDATE schedule SET paused = $2, next_run_at = $3, changed_by = $4::jsonb, "
            f"changed_at = $5 WHERE id = $1 RETURNING {COLUMNS}",
            schedule_id,
            paused,
            next_run,
            json_text(actor),
            now,
        )
    return ScheduleRecord.of(row)


async def delete(engine: AsyncEngine, *, scope: str | None, schedule_id: uuid.UUID) -> bool:
    """Delete a schedule (the tasks it fired stay, with their scheduleId)."""
    async with transaction(engine) as conn:
        await _locked(conn, scope, schedule_id)
        await conn.execute("DELETE FROM schedule WHERE id = $1", schedule_id)
    return True


async def get(
    engine: AsyncEngine, *, scope: str | None, schedule_id: uuid.UUID
) -> ScheduleRecord | None:
    async with connection(engine) as conn:
        row = await conn.fetchrow(
            f"SELECT {COLUMNS} FROM schedule WHERE id = $1 AND ($2::text IS NULL OR owner = $2)",
            schedule_id,
            scope,
        )
    return ScheduleRecord.of(row) if row else None


async def _locked(
    conn: asyncpg.Connection, scope: str | None, schedule_id: uuid.UUID
) -> ScheduleRecord:
    row = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM schedule WHERE id = $1 AND ($2::text IS NULL OR owner = $2) "
        "FOR UPDATE",
        schedule_id,
        scope,
    )
    if row is None:
        raise NotFound(f"id: no schedule {schedule_id}", field="id")
    return ScheduleRecord.of(row)


@dataclass(frozen=True)
class SchedulePage:
    schedules: list[ScheduleRecord]
    has_next_page: bool

    @staticmethod
    def cursor_of(s: ScheduleRecord) -> str:
        return paging.encode(s.created_at, s.id)


async def list_schedules(
    engine: AsyncEngine, *, scope: str | None, first: int, after: str | None
) -> SchedulePage:
    """The owner's schedules, newest first."""
    at, sid = paging.decode(after, "schedules") if after else (None, None)
    async with connection(engine) as conn:
        rows = await conn.fetch(
            f"""SELECT {COLUMNS} FROM schedule
                WHERE ($1::text IS NULL OR owner = $1)
                  AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::uuid))
                ORDER BY created_at DESC, id DESC LIMIT $4""",
            scope,
            at,
            sid,
            first + 1,
        )
    found = [ScheduleRecord.of(r) for r in rows]
    return SchedulePage(found[:first], len(found) > first)


# --- firing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What one claimed schedule does this round."""

    schedule: ScheduleRecord
    fire: list[datetime]  # the ticks to fire, oldest first
    skipped: int  # ticks skipped (overlap SKIP, rate limit)
    next_run_at: datetime
    skip_note: datetime | None = None  # the tick to note on the unfinished last task
    reason: str = ""  # why ticks were skipped


def plan(s: ScheduleRecord, now: datetime, last_unfinished: bool, most: int) -> Plan:
    """Decide a due schedule's round: its ticks up to `now`, by catchup and overlap."""
    due = [s.next_run_at] if s.next_run_at and s.next_run_at <= now else []
    if due:
        due += cron.ticks_between(s.cadence, due[0], now, s.created_at, max(most, 1) + 1)
    next_run = cron.next_tick(s.cadence, now, s.created_at)
    current = due[-1] if due and (now - due[-1]).total_seconds() <= ON_TIME_SECONDS else None
    missed = due[:-1] if current is not None else due
    chosen: list[datetime] = []
    if s.catchup == "ONE" and missed:
        chosen.append(missed[-1])
    elif s.catchup == "ALL":
        chosen.extend(missed[-most:])
    if current is not None:
        chosen.append(current)
    if s.overlap == "SKIP":
        if last_unfinished and chosen:
            return Plan(s, [], len(chosen), next_run, chosen[-1], "its last run is unfinished")
        if len(chosen) > 1:  # runs of one round would overlap each other: only the latest
            return Plan(s, chosen[-1:], len(chosen) - 1, next_run, None, "overlap SKIP")
    return Plan(s, chosen, 0, next_run)


CLAIM = f"""
SELECT {", ".join(f"s.{c}" for c in ScheduleRecord.__dataclass_fields__)},
       clock_timestamp() AS now,
       lt.status IN ('QUEUED', 'RUNNING') AS last_unfinished
FROM schedule s LEFT JOIN task lt ON lt.id = s.last_task_id
WHERE NOT s.paused AND s.next_run_at <= clock_timestamp()
  AND ($2::uuid IS NULL OR s.id = $2)
ORDER BY s.next_run_at
LIMIT $1
FOR UPDATE OF s SKIP LOCKED
"""

# A schedule whose round failed on its own: its due ticks are given up (logged), so that
# it does not fail every round of every worker.
GIVE_UP = "UPDATE schedule SET next_run_at = $2, skipped = skipped + 1 WHERE id = $1"

SAVE = """
UPDATE schedule SET next_run_at = v.next_run_at,
    last_run_at = coalesce(v.last_run_at, schedule.last_run_at),
    last_task_id = coalesce(v.last_task_id, schedule.last_task_id),
    skipped = schedule.skipped + v.skipped,
    last_skipped_at = CASE WHEN v.skipped > 0 THEN v.now ELSE schedule.last_skipped_at END
FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[], $4::uuid[], $5::int[],
            $6::timestamptz[]) AS v(id, next_run_at, last_run_at, last_task_id, skipped, now)
WHERE schedule.id = v.id
"""

NEXT_DUE = "SELECT min(next_run_at) FROM schedule WHERE NOT paused"


@dataclass(frozen=True)
class Round:
    """What one firing transaction did."""

    plans: list[Plan]
    per_unit: list[list[TaskRecord]]
    events: list[Any]
    noted: list[Any]
    next_due: datetime | None


async def fire_due(
    engine: AsyncEngine,
    pool: ArqRedis,
    limiter: RateLimiter | None,
    *,
    most_catchup: int,
    limit: int = BATCH,
) -> tuple[int, datetime | None]:
    """Fire the due ticks of up to `limit` schedules; returns how many tasks were fired and
    when the next schedule is due (None: none is)."""

    claimed: list[uuid.UUID] = []

    async def work(conn: asyncpg.Connection, only: uuid.UUID | None = None) -> Round:
        rows = await conn.fetch(CLAIM, 1 if only else limit, only)
        if not rows:
            return Round([], [], [], [], await conn.fetchval(NEXT_DUE))
        if only is None:
            claimed[:] = [r["id"] for r in rows]
        now: datetime = rows[0]["now"]
        plans = [
            plan(ScheduleRecord.of(r), r["now"], bool(r["last_unfinished"]), most_catchup)
            for r in rows
        ]
        plans = await _within_rates(plans, limiter)
        units = [
            (p.schedule.owner, [p.schedule.submission(t) for t in p.fire], BY_SCHEDULE)
            for p in plans
        ]
        per_unit, events = await submissions.insert(conn, units)
        last = [tasks[-1].id if tasks else None for tasks in per_unit]
        await conn.execute(
            SAVE,
            [p.schedule.id for p in plans],
            [p.next_run_at for p in plans],
            [now if p.fire else None for p in plans],
            last,
            [p.skipped for p in plans],
            [now] * len(plans),
        )
        notes = [
            transitions.tick_skipped(
                p.schedule.last_task_id, p.schedule.id, p.skip_note.isoformat()
            )
            for p in plans
            if p.skip_note is not None and p.schedule.last_task_id is not None
        ]
        noted = await journal.record(conn, notes) if notes else []
        return Round(plans, per_unit, events, noted, await conn.fetchval(NEXT_DUE))

    # again with a fresh transaction when a noted task was written by a newer one (the
    # journal's xid order, see journal.run_transaction)
    try:
        rounds = [await journal.run_transaction(engine, work)]
    except Exception:
        if not claimed:
            raise
        # one schedule must not stop the others: each alone, giving up on one that fails
        log.exception("firing %d schedules failed; firing them one at a time", len(claimed))
        rounds = [await _alone(engine, work, sid) for sid in claimed]
    plans = [p for r in rounds for p in r.plans]
    per_unit = [tasks for r in rounds for tasks in r.per_unit]
    events = [e for r in rounds for e in r.events]
    noted = [o for r in rounds for o in r.noted]
    next_due = min((r.next_due for r in rounds if r.next_due), default=None)
    fired = [task for tasks in per_unit for task in tasks]
    await submissions.announce(pool, fired, [*events, *(o.event for o in noted if o.event)])
    for p in plans:
        if p.skipped:
            event(
                "schedule_skipped",
                logging.INFO,
                schedule_id=str(p.schedule.id),
                ticks=p.skipped,
                reason=p.reason,
            )
    return len(fired), next_due


async def _alone(
    engine: AsyncEngine,
    work: Callable[[asyncpg.Connection, uuid.UUID | None], Awaitable[Round]],
    schedule_id: uuid.UUID,
) -> Round:
    """Fire one schedule in a transaction of its own; when that fails too, give up on its
    due ticks (its next tick is the next one after now) and log why."""
    try:
        return await journal.run_transaction(engine, lambda conn: work(conn, schedule_id))
    except Exception:
        log.exception("schedule %s failed to fire; its due ticks are skipped", schedule_id)
    async with transaction(engine) as conn:
        row = await conn.fetchrow(
            f"SELECT {COLUMNS}, clock_timestamp() AS now FROM schedule WHERE id = $1 FOR UPDATE",
            schedule_id,
        )
        if row is not None:
            s = ScheduleRecord.of(row)
            await conn.execute(
                GIVE_UP, schedule_id, cron.next_tick(s.cadence, row["now"], s.created_at)
            )
    return Round([], [], [], [], None)


async def _within_rates(plans: list[Plan], limiter: RateLimiter | None) -> list[Plan]:
    """Count each API key's ticks against its TASKS_PER_MINUTE, one check per key; a key
    over its limit fires nothing this round (its ticks are skipped, counted as such)."""
    if limiter is None:
        return plans
    by_key: dict[str, int] = {}
    for p in plans:
        if p.fire:
            who = str(p.schedule.key_id or "-")
            by_key[who] = by_key.get(who, 0) + len(p.fire)
    refused: set[str] = set()
    for who, count in by_key.items():
        try:
            await limiter.take(who, count)
        except (RateLimited, LimitExceeded):
            refused.add(who)
    return [
        replace(p, fire=[], skipped=p.skipped + len(p.fire), reason="rate limited")
        if str(p.schedule.key_id or "-") in refused and p.fire
        else p
        for p in plans
    ]


async def trigger(
    engine: AsyncEngine,
    pool: ArqRedis,
    *,
    scope: str | None,
    schedule_id: uuid.UUID,
    actor: Actor,
) -> TaskRecord:
    """Fire the schedule now, outside its cadence (its next tick stays): a task whose
    scheduledFor is now. Works on a paused schedule too."""
    async with transaction(engine) as conn:
        s = await _locked(conn, scope, schedule_id)
        now: datetime = await conn.fetchval("SELECT clock_timestamp()")
        (tasks,), events = await submissions.insert(conn, [(s.owner, [s.submission(now)], actor)])
        await conn.execute(
            "UPDATE schedule SET last_run_at = $2, last_task_id = $3 WHERE id = $1",
            schedule_id,
            now,
            tasks[0].id,
        )
    await submissions.announce(pool, tasks, events)
    return tasks[0]


def seconds_until(next_due: datetime | None, longest: float) -> float:
    """How long the firing loop may sleep: until the next due tick, at most `longest`."""
    if next_due is None:
        return longest
    wait = (next_due - datetime.now(UTC)).total_seconds()
    return min(longest, max(0.005, wait))
