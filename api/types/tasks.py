"""GraphQL types of the contract (DESIGN.md). Names here are binding for clients."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime
from typing import Annotated, Any

import strawberry
from strawberry.scalars import JSON
from strawberry.utils.str_converters import to_camel_case

from api.context import Info
from taskrunner import tasks
from taskrunner.artifacts import list_artifacts
from taskrunner.config import Settings
from taskrunner.errors import BadInput
from taskrunner.events import Event, EventKind, decode_cursor, encode_cursor
from taskrunner.models import Artifact as ArtifactRow
from taskrunner.models import Task as TaskRow
from taskrunner.states import TaskStatus

strawberry.enum(
    TaskStatus,
    description="Where a task is in its life: QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED.",
)


@strawberry.type(description="Why a task failed: a machine-readable code and a message.")
class TaskError:
    code: str
    message: str


@strawberry.interface(description="Something that happened to a task, in order.")
class TaskEvent:
    cursor: str = strawberry.field(
        description="Pass as `after` to resume after this event (ordered per task)."
    )
    task_id: strawberry.ID
    at: datetime


@strawberry.type(description="The task moved to `status`.")
class StatusChanged(TaskEvent):
    status: TaskStatus
    error: TaskError | None = None
    result: JSON | None = None


@strawberry.type(description="The task reported progress in [0, 1].")
class ProgressReported(TaskEvent):
    progress: float
    message: str | None = None


@strawberry.type(description="The task wrote a log line.")
class LogAppended(TaskEvent):
    level: str
    line: str


@strawberry.type(description="A file a task produced.")
class Artifact:
    id: strawberry.ID
    name: str
    content_type: str
    size: int
    sha256: str
    created_at: datetime

    key: strawberry.Private[str]

    @strawberry.field(description="Where to download it; the link expires.")
    async def url(self, info: Info) -> str:
        services = info.context.services
        ttl = services.settings.artifact_url_ttl_seconds
        direct = await services.store.download_url(self.key, ttl)
        if direct is not None:
            return direct
        return f"{info.context.base_url}{services.signer.path(uuid.UUID(str(self.id)), ttl)}"

    @classmethod
    def from_row(cls, row: ArtifactRow) -> Artifact:
        return cls(
            id=strawberry.ID(str(row.id)),
            name=row.name,
            content_type=row.content_type,
            size=row.size,
            sha256=row.sha256,
            created_at=row.created_at,
            key=row.key,
        )


@strawberry.type(description="Where to PUT a file; then call completeArtifactUpload.")
class ArtifactUpload:
    id: strawberry.ID
    url: str
    method: str
    expires_at: datetime


@strawberry.type(description="The task stored an artifact.")
class ArtifactAdded(TaskEvent):
    artifact: Artifact


def event_type(event: Event) -> TaskEvent:
    """The GraphQL object for one stored event."""
    common: dict[str, Any] = {
        "cursor": encode_cursor(event.id),
        "task_id": strawberry.ID(str(event.task_id)),
        "at": event.at,
    }
    data = event.data
    if event.kind is EventKind.STATUS:
        error = data.get("error")
        return StatusChanged(
            **common,
            status=TaskStatus(data["status"]),
            error=TaskError(**error) if error else None,
            result=data.get("result"),
        )
    if event.kind is EventKind.ARTIFACT:
        return ArtifactAdded(
            **common,
            artifact=Artifact(
                id=strawberry.ID(data["id"]),
                name=data["name"],
                content_type=data["content_type"],
                size=data["size"],
                sha256=data["sha256"],
                created_at=event.at,
                key=data["key"],
            ),
        )
    if event.kind is EventKind.PROGRESS:
        return ProgressReported(**common, progress=data["progress"], message=data.get("message"))
    return LogAppended(**common, level=data["level"], line=data["line"])


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


@strawberry.type(description="Seed 000's per-task execution metrics.")
class TaskMetrics:
    queue_wait_seconds: float | None = strawberry.field(
        description="The first attempt's wait in the queue (null before it starts)."
    )
    run_seconds: float | None = strawberry.field(description="Run time of all attempts.")
    attempts: list[AttemptMetrics] = strawberry.field(description="Finished attempts, in order.")


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

    @strawberry.field(
        description="While QUEUED and ready: its place among ready tasks (1 starts next). "
        "Approximate."
    )
    async def queue_position(self, info: Info) -> int | None:
        if self.status is not TaskStatus.QUEUED or self.next_attempt_at is not None:
            return None
        return await tasks.queue_position(
            engine=info.context.services.engine, priority=self.priority, created_at=self.created_at
        )

    @strawberry.field(description="The files the task stored, oldest first.")
    async def artifacts(self, info: Info) -> list[Artifact]:
        rows = await list_artifacts(info.context.services.engine, uuid.UUID(str(self.id)))
        return [Artifact.from_row(r) for r in rows]

    @strawberry.field(
        description="Download link of the task's whole log (written when an attempt ends)."
    )
    async def logs_url(self, info: Info) -> str | None:
        rows = await list_artifacts(info.context.services.engine, uuid.UUID(str(self.id)))
        logs = [r for r in rows if r.is_log]
        return await Artifact.from_row(logs[-1]).url(info) if logs else None

    @strawberry.field(
        description="How its attempts went: queue wait, run time, worker, peak memory."
    )
    async def metrics(self, info: Info) -> TaskMetrics:
        rows = await tasks.attempt_metrics(
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
        first: Annotated[
            int | None,
            strawberry.argument(
                description="At most MAX_PAGE_SIZE (see `limits`), also the default."
            ),
        ] = None,
    ) -> list[TaskEvent]:
        after_id = decode_cursor(after) if after else None
        limit = page_size(first, info.context.settings)
        rows = await tasks.list_events(
            engine=info.context.services.engine,
            task_id=uuid.UUID(str(self.id)),
            after_id=after_id,
            first=limit,
        )
        return [event_type(e) for e in rows]

    @classmethod
    def from_row(cls, row: TaskRow) -> Task:
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


@strawberry.type(description="A live worker, from its heartbeat.")
class Worker:
    id: str
    host: str
    pid: int
    started_at: datetime
    last_heartbeat_at: datetime
    running_task_ids: list[strawberry.ID]


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


@strawberry.type
class TaskEdge:
    cursor: str
    node: Task


@strawberry.type
class TaskConnection:
    edges: list[TaskEdge]
    page_info: PageInfo


@strawberry.type(description="A kind of task you can submit.")
class TaskType:
    name: str
    description: str
    input_schema: JSON = strawberry.field(description="JSON Schema of the task's input.")


@strawberry.input(description="Which tasks to list (all given conditions must hold).")
class TaskFilter:
    status: list[TaskStatus] | None = None
    type: list[str] | None = None
    label: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


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


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


@strawberry.type(description="The limits this service enforces (its configuration).")
class Limits:
    task_max_runtime_seconds: int = strawberry.field(description="Longest run of any task.")
    task_default_timeout_seconds: int = strawberry.field(
        description="Timeout of a task submitted without timeoutSeconds."
    )
    task_max_memory_mb: int = strawberry.field(
        description="Memory one task may add to its worker; past it the task FAILS."
    )
    task_max_artifact_mb: float = strawberry.field(description="Largest artifact (MB).")
    max_artifacts_per_task: int = strawberry.field(
        description="Most artifacts of one task (open uploads count; task.log files do not)."
    )
    owner_max_artifact_mb: float = strawberry.field(
        description="Most artifact bytes one owner may keep (MB), open uploads included."
    )
    artifact_url_ttl_seconds: int = strawberry.field(
        description="How long an artifact's download URL stays valid."
    )
    artifact_upload_ttl_seconds: int = strawberry.field(
        description="How long an upload's PUT URL is valid; not completed within twice "
        "that, the upload expires and its bytes are deleted."
    )
    tasks_per_minute: int = strawberry.field(
        description="Tasks one API key may submit per minute (0: no limit)."
    )
    max_batch_size: int = strawberry.field(description="Most tasks in one submitTasks.")
    max_task_input_bytes: int = strawberry.field(description="Largest input of one task, as JSON.")
    max_request_bytes: int = strawberry.field(
        description="Largest request body or websocket message."
    )
    max_query_depth: int = strawberry.field(description="Deepest nesting of a query.")
    max_query_aliases: int = strawberry.field(description="Most aliases in one operation.")
    max_query_tokens: int = strawberry.field(description="Most tokens in one document.")
    max_query_cost: int = strawberry.field(
        description="Largest cost of one operation, refused before anything runs. Each "
        "selected field counts 1 for every item of every list it is read under. A list counts "
        "as many items as its `first` (given, or its default; maxPageSize when null); a "
        "connection's `first` sizes its `edges`; a list without `first` counts 10. "
        "`__typename` and introspection count 0. E.g. `tasks(first: 50) { edges { node { id "
        "artifacts { id } } } }` costs 2 + 50 x (3 + 10 x 1) = 652."
    )
    max_page_size: int = strawberry.field(
        description="Most items of one page (`tasks`, `Task.events`); `Task.events` reads "
        "one such page when `first` is not given."
    )
    task_max_retries: int = strawberry.field(description="Highest `maxRetries` of a task.")
    max_labels_per_task: int = strawberry.field(description="Most labels of one task.")
    max_label_length: int = strawberry.field(description="Longest label (characters).")
    max_idempotency_key_length: int = strawberry.field(
        description="Longest `idempotencyKey` (characters)."
    )
    max_subscriptions_per_connection: int = strawberry.field(
        description="Subscriptions one websocket may hold open."
    )
    max_subscriptions_per_key: int = strawberry.field(
        description="Subscriptions one API key may hold open at once, over all its websockets "
        "and Server-Sent Events streams on every api replica."
    )
    ws_connection_init_timeout_seconds: float = strawberry.field(
        description="A websocket that sends no connection_init within this is closed (4408)."
    )
    fetch_domain_allowlist: list[str] = strawberry.field(
        description="Host patterns webScrape may fetch."
    )
    search_source_allowlist: list[str] = strawberry.field(description="Sources search may query.")
    search_max_results: int = strawberry.field(description="Most results of one search.")

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            task_max_runtime_seconds=settings.task_max_runtime_seconds,
            task_default_timeout_seconds=settings.task_default_timeout_seconds,
            task_max_memory_mb=settings.task_max_memory_mb,
            task_max_artifact_mb=settings.task_max_artifact_mb,
            max_artifacts_per_task=settings.max_artifacts_per_task,
            owner_max_artifact_mb=settings.owner_max_artifact_mb,
            artifact_url_ttl_seconds=settings.artifact_url_ttl_seconds,
            artifact_upload_ttl_seconds=settings.artifact_upload_ttl_seconds,
            tasks_per_minute=settings.tasks_per_minute,
            max_batch_size=settings.max_batch_size,
            max_task_input_bytes=settings.max_task_input_bytes,
            max_request_bytes=settings.max_request_bytes,
            max_query_depth=settings.max_query_depth,
            max_query_aliases=settings.max_query_aliases,
            max_query_tokens=settings.max_query_tokens,
            max_query_cost=settings.max_query_cost,
            max_page_size=settings.max_page_size,
            task_max_retries=settings.task_max_retries,
            max_labels_per_task=settings.max_labels_per_task,
            max_label_length=settings.max_label_length,
            max_idempotency_key_length=settings.max_idempotency_key_length,
            max_subscriptions_per_connection=settings.max_subscriptions_per_connection,
            max_subscriptions_per_key=settings.max_subscriptions_per_key,
            ws_connection_init_timeout_seconds=settings.ws_connection_init_timeout_seconds,
            fetch_domain_allowlist=_csv(settings.fetch_domain_allowlist),
            search_source_allowlist=_csv(settings.search_source_allowlist),
            search_max_results=settings.search_max_results,
        )

    def as_json(self) -> dict[str, Any]:
        """The same fields, camelCase, for `GET /limits`."""
        return {to_camel_case(k): v for k, v in dataclasses.asdict(self).items()}
