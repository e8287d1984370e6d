"""The GraphQL types of tasks: Task, its metrics, pages, filter and options, and Processed."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

import strawberry
from strawberry.scalars import JSON

from api.context import Info
from api.types.artifacts import Artifact
from api.types.events import TaskEvent, event_type
from api.types.status import TaskError
from taskrunner import queries, webhooks, workflows
from taskrunner.artifacts.records import list_artifacts
from taskrunner.changes import WAITING_PARENTS
from taskrunner.concurrency import WAITING as WAITING_SLOT
from taskrunner.config import Settings
from taskrunner.errors import BadInput
from taskrunner.events import decode_cursor
from taskrunner.models import TaskRecord
from taskrunner.states import TaskStatus

# A list field's `first`: how many of its items (at most MAX_PAGE_SIZE, also the default).
FirstOfList = Annotated[
    int | None,
    strawberry.argument(description="At most MAX_PAGE_SIZE (see `limits`), also the default."),
]


@strawberry.type(description="One attempt of a task, as its worker measured it.")
class AttemptMetrics:
    attempt: int
    worker_id: str = strawberry.field(description="The worker that ran it.")
    status: TaskStatus = strawberry.field(
        description="How the attempt ended (QUEUED: it failed and a retry follows)."
    )
    queue_wait_seconds: float = strawberry.field(
        description="From when it was due (submitted, runAt, or retried) to its start."
    )
    run_seconds: float = strawberry.field(description="From its start to its end.")
    peak_memory_mb: float | None = strawberry.field(
        description="The worker process's highest RSS seen while it ran (MB)."
    )
    finished_at: datetime

    @classmethod
    def from_event(cls, status: str, at: datetime, figures: dict[str, Any]) -> AttemptMetrics:
        return cls(
            attempt=int(figures["attempt"]),
            worker_id=str(figures["worker_id"]),
            status=TaskStatus(status),
            queue_wait_seconds=float(figures["queue_wait_seconds"]),
            run_seconds=float(figures["run_seconds"]),
            peak_memory_mb=figures.get("peak_memory_mb"),
            finished_at=at,
        )


@strawberry.type(description="Execution metrics of a task: queue wait, run time and attempts.")
class TaskMetrics:
    queue_wait_seconds: float | None = strawberry.field(
        description="The first attempt's wait in the queue (null before it starts)."
    )
    run_seconds: float | None = strawberry.field(description="Run time of all attempts.")
    attempts: list[AttemptMetrics] = strawberry.field(description="Finished attempts, in order.")


WebhookDeliveryStatus = strawberry.enum(
    webhooks.DeliveryStatus,
    name="WebhookDeliveryStatus",
    description="PENDING: due at dueAt (or being posted); DELIVERED: the receiver answered "
    "2xx; FAILED: this attempt failed (a PENDING next attempt follows unless given up).",
)


@strawberry.type(
    description="One attempt to POST a task's final status to its webhook (options.webhookUrl)."
)
class WebhookDelivery:
    delivery_id: strawberry.ID = strawberry.field(
        description="Shared by the attempts of one delivery; sent as Taskrunner-Delivery."
    )
    attempt: int = strawberry.field(description="1 for the first attempt, then 2, 3 ...")
    status: WebhookDeliveryStatus  # type: ignore[valid-type]
    url: str
    task_status: TaskStatus = strawberry.field(description="The final status it carries.")
    at: datetime = strawberry.field(
        description="When the attempt was made (while PENDING: when it is due)."
    )
    due_at: datetime
    finished_at: datetime | None
    duration_ms: float | None
    status_code: int | None = strawberry.field(
        description="The receiver's HTTP status (null: no answer, or not sent)."
    )
    error: str | None = strawberry.field(
        description="Why it failed: the HTTP status, a timeout, a refused address ..."
    )

    @classmethod
    def from_record(cls, r: webhooks.DeliveryRecord) -> WebhookDelivery:
        return cls(
            delivery_id=strawberry.ID(str(r.delivery_id)),
            attempt=r.attempt,
            status=webhooks.DeliveryStatus(r.status),
            url=r.url,
            task_status=TaskStatus(r.task_status),
            at=r.started_at or r.due_at,
            due_at=r.due_at,
            finished_at=r.finished_at,
            duration_ms=r.duration_ms,
            status_code=r.status_code,
            error=r.error,
        )


@strawberry.type(description="A submitted task and its current state.")
class Task:
    id: strawberry.ID
    type: str
    status: TaskStatus
    input: JSON
    result: JSON | None
    error: TaskError | None
    progress: float | None
    progress_message: str | None
    priority: int
    attempts: int
    max_retries: int
    timeout_seconds: int
    idempotency_key: str | None
    labels: list[str]
    created_at: datetime
    scheduled_for: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested: bool
    worker_id: str | None = strawberry.field(
        description="The worker running it (while RUNNING), as listed by `workers`."
    )
    next_attempt_at: datetime | None = strawberry.field(
        description="While QUEUED and waiting (runAt, or the backoff before a retry): when it "
        "is handed to the workers."
    )
    queue: str = strawberry.field(description="The named queue it runs from.")
    concurrency_key: str | None = strawberry.field(
        description="At most concurrencyLimit of your tasks with this key run at once."
    )
    concurrency_limit: int | None
    waiting_for_slot: bool = strawberry.field(
        description="QUEUED and held back: as many tasks of its concurrencyKey run as its "
        "concurrencyLimit allows; it starts when one of them ends."
    )
    waiting_for_parents: bool = strawberry.field(
        description="A workflow step, QUEUED and out of the queue until every step it "
        "depends on SUCCEEDED (see waitingOn)."
    )
    schedule_id: strawberry.ID | None = strawberry.field(
        description="The schedule that fired it (scheduledFor is then its tick)."
    )
    workflow_id: strawberry.ID | None = strawberry.field(
        description="The workflow it is a step of."
    )
    step_key: str | None = strawberry.field(description="Its step's key in that workflow.")
    deadline: datetime | None = strawberry.field(
        description="It never starts after this: still QUEUED then, it ends FAILED with "
        "DEADLINE_EXCEEDED."
    )
    rate_limit: str | None = strawberry.field(
        description="The rate its starts are held to across all workers (its type's "
        "RATE_LIMIT, or options.rateLimit), e.g. `10 per 1 seconds`."
    )
    parent_id: strawberry.ID | None = strawberry.field(
        description="The task whose body submitted it (ctx.submit); cancelling that task "
        "cancels this one unless it was submitted detached."
    )
    detached: bool = strawberry.field(
        description="Submitted by a task's body as detached: a cancel of the parent leaves it be."
    )
    webhook_url: str | None = strawberry.field(
        description="Where its final status is POSTed (options.webhookUrl, or its key's "
        "default); see webhookDeliveries."
    )

    @strawberry.field(
        description="Its webhook's attempts, oldest first: each final status it reached is one "
        "delivery, tried up to WEBHOOK_MAX_ATTEMPTS times with backoff (the first `first`, "
        "default and at most MAX_PAGE_SIZE)."
    )
    async def webhook_deliveries(
        self,
        info: Info,
        first: FirstOfList = None,
    ) -> list[WebhookDelivery]:
        if self.webhook_url is None:
            return []
        found = await webhooks.list_deliveries(
            info.context.services.engine,
            uuid.UUID(str(self.id)),
            page_size(first, info.context.settings),
        )
        return [WebhookDelivery.from_record(r) for r in found]

    @strawberry.field(
        description="The tasks its body submitted (ctx.submit), oldest first: the first "
        "`first` of them (default and at most MAX_PAGE_SIZE)."
    )
    async def children(
        self,
        info: Info,
        first: FirstOfList = None,
    ) -> list[Task]:
        found = await queries.children(
            engine=info.context.services.engine,
            parent_id=uuid.UUID(str(self.id)),
            first=page_size(first, info.context.settings),
        )
        return [Task.from_row(t) for t in found]

    @strawberry.field(
        description="A workflow step's parents that have not SUCCEEDED yet (empty for other "
        "tasks). While it is non-empty the step waits QUEUED, out of the queue."
    )
    async def waiting_on(self, info: Info) -> list[Task]:
        if self.workflow_id is None:
            return []
        task_id = uuid.UUID(str(self.id))
        found = await workflows.waiting_on(engine=info.context.services.engine, task_ids=[task_id])
        return [Task.from_row(t) for t in found[task_id]]

    @strawberry.field(
        description="While QUEUED and ready: its place among ready tasks (1 starts next). "
        "Approximate."
    )
    async def queue_position(self, info: Info) -> int | None:
        if (
            self.status is not TaskStatus.QUEUED
            or self.next_attempt_at is not None
            or self.waiting_for_slot
            or self.waiting_for_parents
        ):
            return None
        return await queries.queue_position(
            engine=info.context.services.engine,
            priority=self.priority,
            created_at=self.created_at,
            queue=self.queue,
        )

    @strawberry.field(description="The files the task stored, oldest first.")
    async def artifacts(self, info: Info) -> list[Artifact]:
        rows = await list_artifacts(info.context.services.engine, uuid.UUID(str(self.id)))
        return [Artifact.from_row(r) for r in rows]

    @strawberry.field(
        description="Link to the task's log as text, once it started: each attempt's steps "
        "(started on which worker, how it ended, retries) and the task's own lines, so far "
        "while it runs. The link expires after ARTIFACT_URL_TTL_SECONDS."
    )
    def logs_url(self, info: Info) -> str | None:
        if self.attempts == 0:
            return None
        services = info.context.services
        ttl = services.settings.artifact_url_ttl_seconds
        path = services.signer.path(uuid.UUID(str(self.id)), ttl, "log")
        return f"{info.context.base_url}{path}"

    @strawberry.field(
        description="How its attempts went: queue wait, run time, worker, peak memory."
    )
    async def metrics(self, info: Info) -> TaskMetrics:
        rows = await queries.attempt_metrics(
            engine=info.context.services.engine, task_id=uuid.UUID(str(self.id))
        )
        attempts = [AttemptMetrics.from_event(status, at, figures) for status, at, figures in rows]
        return TaskMetrics(
            queue_wait_seconds=attempts[0].queue_wait_seconds if attempts else None,
            run_seconds=round(sum(a.run_seconds for a in attempts), 4) if attempts else None,
            attempts=attempts,
        )

    @strawberry.field(
        description="The task's events in order, after the cursor `after`, one page at a "
        "time: pass the last one's cursor as `after` for the next page."
    )
    async def events(
        self,
        info: Info,
        after: str | None = None,
        first: FirstOfList = None,
    ) -> list[TaskEvent]:
        after_id = decode_cursor(after) if after else None
        limit = page_size(first, info.context.settings)
        rows = await queries.list_events(
            engine=info.context.services.engine,
            task_id=uuid.UUID(str(self.id)),
            after_id=after_id,
            first=limit,
        )
        return [event_type(e) for e in rows]

    @classmethod
    def from_row(cls, row: TaskRecord) -> Task:
        error = (
            TaskError(code=row.error_code, message=row.error_message or "")
            if row.error_code
            else None
        )
        return cls(
            id=strawberry.ID(str(row.id)),
            type=row.type,
            status=TaskStatus(row.status),
            input=JSON(row.input),
            result=JSON(row.result),
            error=error,
            progress=row.progress,
            progress_message=row.progress_message,
            priority=row.priority,
            attempts=row.attempts,
            max_retries=row.max_retries,
            timeout_seconds=row.timeout_seconds,
            idempotency_key=row.idempotency_key,
            labels=list(row.labels),
            created_at=row.created_at,
            scheduled_for=row.scheduled_for,
            started_at=row.started_at,
            finished_at=row.finished_at,
            cancel_requested=row.cancel_requested,
            worker_id=row.worker_id if row.status == TaskStatus.RUNNING.value else None,
            next_attempt_at=row.due_at if row.status == TaskStatus.QUEUED.value else None,
            queue=row.queue,
            concurrency_key=row.concurrency_key,
            concurrency_limit=row.concurrency_limit,
            waiting_for_slot=row.waiting == WAITING_SLOT and row.status == TaskStatus.QUEUED.value,
            schedule_id=strawberry.ID(str(row.schedule_id)) if row.schedule_id else None,
            workflow_id=strawberry.ID(str(row.workflow_id)) if row.workflow_id else None,
            step_key=row.step_key,
            deadline=row.deadline,
            rate_limit=row.rate_limit,
            parent_id=strawberry.ID(str(row.parent_id)) if row.parent_id else None,
            detached=row.detached,
            webhook_url=row.webhook_url,
            waiting_for_parents=row.waiting == WAITING_PARENTS
            and row.status == TaskStatus.QUEUED.value,
        )


def page_size(first: int | None, settings: Settings) -> int:
    """A page's size: `first`, within 1 to MAX_PAGE_SIZE (which None asks for); the query
    cost (api.limits) counts pages of that size."""
    limit = settings.max_page_size
    if first is None:
        return limit
    if not 1 <= first <= limit:
        raise BadInput(
            f"first: must be between 1 and MAX_PAGE_SIZE ({limit}), got {first}; read "
            "further pages with `after`",
            field="first",
        )
    return first


@strawberry.type(description="Whether work for a key was done, and its latest task.")
class Processed:
    key: str
    processed: bool = strawberry.field(description="A task carrying the key SUCCEEDED.")
    processed_at: datetime | None = strawberry.field(description="When it last did.")
    latest_task: Task | None = strawberry.field(description="The newest task carrying the key.")


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None

    @classmethod
    def of(cls, edges: Sequence[Any], has_next_page: bool) -> PageInfo:
        """A page's info: whether more follow, and its last edge's cursor."""
        return cls(has_next_page=has_next_page, end_cursor=edges[-1].cursor if edges else None)


@strawberry.type
class TaskEdge:
    cursor: str
    node: Task


@strawberry.type
class TaskConnection:
    edges: list[TaskEdge]
    page_info: PageInfo


@strawberry.input(description="Which tasks to list (all given conditions must hold).")
class TaskFilter:
    status: list[TaskStatus] | None = None
    type: list[str] | None = None
    label: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    ids: list[strawberry.ID] | None = strawberry.field(
        default=None, description="Only these tasks (at most 1,000 ids)."
    )
    error_code: list[str] | None = strawberry.field(
        default=None,
        description="Only tasks whose last error has one of these codes (FAILED ones, and "
        "those QUEUED for a retry).",
    )


@strawberry.input(description="How to run a task. Every field is optional.")
class TaskOptionsInput:
    priority: int | None = strawberry.field(
        default=None,
        description="-1000 to 1000 (default 0): among ready tasks a higher one starts first.",
    )
    max_retries: int | None = strawberry.field(
        default=None,
        description="Run again after a failure up to this many times (0 to TASK_MAX_RETRIES, "
        "see `limits`), waiting longer each time; default: the task type's policy.",
    )
    timeout_seconds: int | None = strawberry.field(
        default=None, description="Fail with TIMEOUT after this long (<= TASK_MAX_RUNTIME_SECONDS)."
    )
    run_at: datetime | None = strawberry.field(
        default=None, description="Do not start before this time."
    )
    delay_seconds: int | None = strawberry.field(
        default=None, description="Do not start before this many seconds from now."
    )
    idempotency_key: str | None = strawberry.field(
        default=None,
        description="Submitting again with the same key returns the first task (1 to "
        "MAX_IDEMPOTENCY_KEY_LENGTH characters).",
    )
    labels: list[str] | None = strawberry.field(
        default=None,
        description="Free-form labels to filter by: at most MAX_LABELS_PER_TASK, each 1 to "
        "MAX_LABEL_LENGTH characters.",
    )
    queue: str | None = strawberry.field(
        default=None,
        description="The named queue to run it from (default: the task type's queue, else "
        "`default`); workers serve the queues they are started with (WORKER_QUEUES).",
    )
    concurrency_key: str | None = strawberry.field(
        default=None,
        description="At most concurrencyLimit of your tasks with this key RUNNING at once, "
        "across all workers; the others wait QUEUED (no attempt used). Default: the task "
        "type's (webScrape: one per domain).",
    )
    concurrency_limit: int | None = strawberry.field(
        default=None, description="With concurrencyKey: 1 or more (default 1)."
    )
    deadline: datetime | None = strawberry.field(
        default=None,
        description="Never start after this time: a task still QUEUED then (waiting in the "
        "queue, for runAt, a slot, a rate limit or a retry's backoff) ends FAILED with "
        "DEADLINE_EXCEEDED and never runs. Must be after runAt.",
    )
    rate_limit: str | None = strawberry.field(
        default=None,
        description="Hold the starts of this type's tasks submitted with the same rate to it, "
        'across all workers, e.g. "10/second", "100/minute", "5 per 2 seconds" (default: the '
        "task type's RATE_LIMIT, if any). A task over it waits QUEUED, no attempt used.",
    )
    webhook_url: str | None = strawberry.field(
        default=None,
        description="POST the task's final status (SUCCEEDED, FAILED, CANCELLED: status, "
        "result, error) here, signed with HMAC-SHA256 (header Taskrunner-Signature) by your "
        "key's webhook secret, retried with backoff; default: your key's webhook. http or "
        "https, a host WEBHOOK_ALLOWLIST allows. See Task.webhookDeliveries.",
    )
