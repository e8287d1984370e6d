"""The GraphQL types of schedules and named queues (DESIGN.md, "Contract additions:
orchestration")."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import Enum

import strawberry
from strawberry.scalars import JSON

from api.context import Info
from api.inputs import TaskSpecInput
from api.types.actors import Actor
from api.types.tasks import PageInfo, Task, TaskConnection, TaskEdge, TaskOptionsInput, page_size
from taskrunner import queries
from taskrunner.queues import QueueInfo
from taskrunner.schedules import ScheduleRecord


@strawberry.enum(description="What a schedule does while its last run is unfinished.")
class OverlapPolicy(Enum):
    ALLOW = "ALLOW"  # fire anyway
    SKIP = "SKIP"  # fire nothing (the skip is counted and noted on that run: TickSkipped)


@strawberry.enum(description="Which ticks a schedule fires that fell while nothing ran.")
class CatchupPolicy(Enum):
    NONE = "NONE"  # none: only the current tick fires
    ONE = "ONE"  # the latest missed one, and the current tick
    ALL = "ALL"  # each (the latest SCHEDULE_MAX_CATCHUP), and the current tick


@strawberry.input(description="A schedule: what to submit, and when.")
class ScheduleInput:
    name: str = strawberry.field(description="1 to 200 characters, for you to recognise it.")
    task: TaskSpecInput = strawberry.field(description="The task each tick submits.")
    cron: str | None = strawberry.field(
        default=None,
        description="A 5-field cron expression (minute hour day month weekday), e.g. "
        '"*/5 * * * *", in `timezone`. Give cron or everySeconds.',
    )
    every_seconds: float | None = strawberry.field(
        default=None,
        description="Fire every this many seconds (1 to 316224000, i.e. 10 years) from its "
        "creation.",
    )
    timezone: str = strawberry.field(
        default="UTC",
        description="IANA time zone of `cron`, e.g. Europe/Berlin. Across DST changes it "
        "fires as cron does: a time skipped when clocks go forward fires right after the "
        "change, a time repeated when they go back fires once.",
    )
    options: TaskOptionsInput | None = strawberry.field(
        default=None,
        description="Options of every task it fires, as submitTask takes them (without "
        "runAt, delaySeconds and idempotencyKey).",
    )
    overlap: OverlapPolicy = OverlapPolicy.ALLOW
    catchup: CatchupPolicy = CatchupPolicy.ONE
    paused: bool = False


@strawberry.type(description="A task submitted on a cron expression or a fixed interval.")
class Schedule:
    id: strawberry.ID
    name: str
    cron: str | None
    every_seconds: float | None
    timezone: str
    task: JSON = strawberry.field(description="The task spec it submits, as given.")
    options: JSON = strawberry.field(description="The options of the tasks it fires.")
    paused: bool
    next_run_at: datetime | None = strawberry.field(
        description="Its next tick (null while paused it may still show the last one)."
    )
    last_run_at: datetime | None = strawberry.field(description="When it last fired a task.")
    overlap: OverlapPolicy
    catchup: CatchupPolicy
    skipped_ticks: int = strawberry.field(
        description="Ticks it skipped: overlap SKIP while its last run was unfinished, or "
        "over TASKS_PER_MINUTE."
    )
    last_skipped_at: datetime | None
    created_at: datetime
    created_by: Actor | None = strawberry.field(description="Who created it.")
    changed_by: Actor | None = strawberry.field(
        description="Who changed it last (updateSchedule, pauseSchedule, resumeSchedule); "
        "null if nobody has since it was created."
    )
    changed_at: datetime | None = strawberry.field(description="When it was changed last.")

    @strawberry.field(description="The tasks it fired, newest tick first.")
    async def tasks(
        self, info: Info, first: int | None = 20, after: str | None = None
    ) -> TaskConnection:
        size = page_size(first, info.context.settings)
        page = await queries.schedule_tasks(
            engine=info.context.services.engine,
            schedule_id=uuid.UUID(str(self.id)),
            first=size,
            after=after,
        )
        edges = [
            TaskEdge(cursor=queries.encode_page_cursor(t, by_tick=True), node=Task.from_row(t))
            for t in page.tasks
        ]
        return TaskConnection(
            edges=edges,
            page_info=PageInfo.of(edges, page.has_next_page),
        )

    @classmethod
    def from_record(cls, s: ScheduleRecord) -> Schedule:
        options = {
            "priority": s.options.get("priority"),
            "maxRetries": s.options.get("max_retries"),
            "timeoutSeconds": s.options.get("timeout_seconds"),
            "labels": s.options.get("labels") or [],
            "queue": s.options.get("queue"),
            "concurrencyKey": s.options.get("concurrency_key"),
            "concurrencyLimit": s.options.get("concurrency_limit"),
        }
        return cls(
            id=strawberry.ID(str(s.id)),
            name=s.name,
            cron=s.cron,
            every_seconds=s.every_seconds,
            timezone=s.timezone,
            task=JSON({s.task_type: s.task_input}),
            options=JSON(options),
            paused=s.paused,
            next_run_at=s.next_run_at,
            last_run_at=s.last_run_at,
            overlap=OverlapPolicy(s.overlap),
            catchup=CatchupPolicy(s.catchup),
            skipped_ticks=s.skipped,
            last_skipped_at=s.last_skipped_at,
            created_at=s.created_at,
            created_by=Actor.of(s.created_by),
            changed_by=Actor.of(s.changed_by),
            changed_at=s.changed_at,
        )


@strawberry.type
class ScheduleEdge:
    cursor: str
    node: Schedule


@strawberry.type
class ScheduleConnection:
    edges: list[ScheduleEdge]
    page_info: PageInfo


@strawberry.type(description="A named queue: its state and what waits and runs on it.")
class Queue:
    name: str
    paused: bool = strawberry.field(description="Paused: nothing new starts from it.")
    queued: int = strawberry.field(description="Your tasks waiting on it (all, for admins).")
    running: int = strawberry.field(description="Your tasks running from it (all, for admins).")
    oldest_queued_at: datetime | None = strawberry.field(
        description="When the oldest of those waiting was created."
    )
    workers: int = strawberry.field(description="Live workers serving it.")
    changed_by: Actor | None = strawberry.field(
        description="Who paused or resumed it last; null if nobody has."
    )
    changed_at: datetime | None = strawberry.field(
        description="When it was paused or resumed last."
    )

    @classmethod
    def from_info(cls, q: QueueInfo) -> Queue:
        return cls(
            name=q.name,
            paused=q.paused,
            queued=q.queued,
            running=q.running,
            oldest_queued_at=q.oldest_queued_at,
            workers=q.workers,
            changed_by=Actor.of(q.changed_by),
            changed_at=q.changed_at,
        )
