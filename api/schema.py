"""The Strawberry schema: queries, mutations and subscriptions of the contract."""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Annotated, Any

import strawberry
from strawberry.extensions import ParserCache, ValidationCache
from strawberry.scalars import JSON

from api.context import Info
from api.errors import ErrorCodes
from api.fanout.direct import Direct
from api.fanout.events import typed_event
from api.fanout.executor import SharedEventExecutor
from api.fanout.extensions import FanoutSchema
from api.inputs import TaskSpecInput, TaskSubmissionInput, build_task_inputs, to_submission
from api.limits import QueryLimits
from api.observability import GraphQLMetrics
from api.types.artifacts import Artifact, ArtifactUpload
from api.types.events import (
    ArtifactAdded,
    LogAppended,
    ProgressReported,
    StatusChanged,
    TaskEvent,
    event_type,
)
from api.types.service import Limits, TaskType, Worker
from api.types.tasks import (
    PageInfo,
    Processed,
    Task,
    TaskConnection,
    TaskEdge,
    TaskFilter,
    TaskOptionsInput,
    page_size,
)
from taskrunner import control, heartbeats, owner_streams, queries, streams
from taskrunner.artifacts.quotas import Quota
from taskrunner.artifacts.records import add_artifact, check_content_type, check_name
from taskrunner.artifacts.uploads import begin_upload, complete_upload, find_upload
from taskrunner.errors import BadInput, LimitExceeded, NotFound, RateLimited
from taskrunner.events import decode_cursor
from taskrunner.logs import event
from taskrunner.models import TaskRecord
from taskrunner.states import TaskStatus
from taskrunner.submissions import submit
from workers.catalog import catalog

log = logging.getLogger(__name__)


def _task_id(value: strawberry.ID, field: str = "id") -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise BadInput(
            f"{field}: {value!r} is not a task id; task ids are UUIDs returned by submitTask",
            field=field,
        ) from None


async def _change_task(
    info: Info, id: strawberry.ID, operation: Callable[..., Awaitable[TaskRecord]]
) -> Task:
    """Run a task operation (cancel, retry) for the caller and answer the task."""
    services = info.context.services
    row = await operation(
        engine=services.engine,
        redis=services.redis,
        pool=services.redis,
        task_id=_task_id(id),
        owner=info.context.scope,
    )
    return Task.from_row(row)


async def _take_rate(info: Info, tasks: int) -> None:
    """Count submissions against TASKS_PER_MINUTE; over it, RATE_LIMITED (HTTP: 429 with
    Retry-After)."""
    context = info.context
    try:
        await context.services.rate_limiter.take(str(context.caller.key_id or "-"), tasks)
    except RateLimited as exc:
        event(
            "rate_limited",
            logging.WARNING,
            key=context.caller.name,
            tasks=tasks,
            retry_after_seconds=exc.retry_after,
        )
        if context.response is not None:
            context.response.status_code = 429
            context.response.headers["Retry-After"] = str(exc.retry_after)
        raise


def _aware(name: str, value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise BadInput(
            f"filter.{name}: {value.isoformat()} has no time zone; give one, e.g. "
            f"{value.isoformat()}Z",
            field=f"filter.{name}",
        )
    return value


def _domain_filter(f: TaskFilter) -> queries.TaskCriteria:
    return queries.TaskCriteria(
        status=tuple(TaskStatus(s) for s in f.status or ()),
        type=tuple(f.type or ()),
        label=f.label,
        created_after=_aware("createdAfter", f.created_after),
        created_before=_aware("createdBefore", f.created_before),
    )


@strawberry.type
class Query:
    @strawberry.field(description="One task by id; null when there is none.")
    async def task(self, info: Info, id: strawberry.ID) -> Task | None:
        try:
            task_id = uuid.UUID(str(id))
        except ValueError:
            return None
        row = await queries.get(
            engine=info.context.services.engine, task_id=task_id, owner=info.context.scope
        )
        return Task.from_row(row) if row else None

    @strawberry.field(
        description="Your tasks, newest first, `first` (at most MAX_PAGE_SIZE, see `limits`; "
        "null: that many) at a time."
    )
    async def tasks(
        self,
        info: Info,
        filter: TaskFilter | None = None,
        first: int | None = 20,
        after: str | None = None,
    ) -> TaskConnection:
        size = page_size(first, info.context.settings)
        f = filter or TaskFilter()
        page = await queries.list_tasks(
            engine=info.context.services.engine,
            owner=info.context.scope,
            filter=_domain_filter(f),
            first=size,
            after=after,
        )
        edges = [TaskEdge(cursor=page.cursor_of(t), node=Task.from_row(t)) for t in page.tasks]
        return TaskConnection(
            edges=edges,
            page_info=PageInfo(
                has_next_page=page.has_next_page,
                end_cursor=edges[-1].cursor if edges else None,
            ),
        )

    @strawberry.field(description="The kinds of task you can submit, with their input schemas.")
    def task_types(self) -> list[TaskType]:
        return [
            TaskType(
                name=t.name,
                description=t.description,
                input_schema=JSON(t.input_model.model_json_schema()),
            )
            for t in catalog().values()
        ]

    @strawberry.field(
        description="Has the key `scope:key` been processed? True when one of your tasks "
        "carrying it (as idempotencyKey or as a label) SUCCEEDED; with the latest such task."
    )
    async def processed(self, info: Info, scope: str, key: str) -> Processed:
        if not scope or not key:
            raise BadInput('scope, key: give both, e.g. scope: "search", key: "<hash>"')
        full = f"{scope}:{key}"
        done_at, latest = await queries.processed(
            engine=info.context.services.engine, owner=info.context.scope, key=full
        )
        return Processed(
            key=full,
            processed=done_at is not None,
            processed_at=done_at,
            latest_task=Task.from_row(latest) if latest else None,
        )

    @strawberry.field(description="The limits this service enforces.")
    def limits(self, info: Info) -> Limits:
        return Limits.of(info.context.settings)

    @strawberry.field(
        description="Live workers (from their heartbeats), oldest first; each lists the "
        "running tasks you may see."
    )
    async def workers(self, info: Info) -> list[Worker]:
        found = await heartbeats.live_workers(info.context.services.redis)
        running = {t for w in found for t in w.running}
        visible = await queries.visible_ids(
            engine=info.context.services.engine, ids=running, owner=info.context.scope
        )
        return [
            Worker(
                id=w.id,
                host=w.host,
                pid=w.pid,
                started_at=w.started_at,
                last_heartbeat_at=w.last_heartbeat_at,
                running_task_ids=[strawberry.ID(str(t)) for t in w.running if t in visible],
            )
            for w in sorted(found, key=lambda w: w.started_at)
        ]


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Submit one task; it is QUEUED when this returns.")
    async def submit_task(
        self, info: Info, task: TaskSpecInput, options: TaskOptionsInput | None = None
    ) -> Task:
        services = info.context.services
        submission = to_submission(task, options, services.settings)
        await _take_rate(info, 1)
        (row,) = await submit(
            engine=services.engine,
            redis=services.redis,
            pool=services.redis,
            owner=info.context.owner,
            submissions=[submission],
            crash_after_commit=services.settings.test_crash_after_commit,
        )
        return Task.from_row(row)

    @strawberry.mutation(description="Submit up to MAX_BATCH_SIZE tasks, all or none.")
    async def submit_tasks(self, info: Info, tasks: list[TaskSubmissionInput]) -> list[Task]:
        services = info.context.services
        limit = services.settings.max_batch_size
        if not tasks:
            raise BadInput("tasks: give at least one submission", field="tasks")
        if len(tasks) > limit:
            raise LimitExceeded(
                f"tasks: give 1 to MAX_BATCH_SIZE ({limit}) submissions, got {len(tasks)}; "
                "split the batch",
                field="tasks",
            )
        submissions = [
            to_submission(item.task, item.options, services.settings, prefix=f"tasks[{i}].")
            for i, item in enumerate(tasks)
        ]
        await _take_rate(info, len(submissions))
        rows = await submit(
            engine=services.engine,
            redis=services.redis,
            pool=services.redis,
            owner=info.context.owner,
            submissions=submissions,
            crash_after_commit=services.settings.test_crash_after_commit,
        )
        return [Task.from_row(r) for r in rows]

    @strawberry.mutation(
        description="Cancel a QUEUED task (it never runs) or a RUNNING one (it is interrupted)."
    )
    async def cancel_task(self, info: Info, id: strawberry.ID) -> Task:
        return await _change_task(info, id, control.cancel)

    @strawberry.mutation(
        description="Run a FAILED or CANCELLED task again as a new attempt; its events keep "
        "the whole history. Counts against TASKS_PER_MINUTE like a submission."
    )
    async def retry_task(self, info: Info, id: strawberry.ID) -> Task:
        _task_id(id)  # a malformed id is BAD_INPUT before it costs anything
        await _take_rate(info, 1)  # a retry runs the task again: as costly as a new one
        return await _change_task(info, id, control.retry)

    @strawberry.mutation(
        description="Attach a file to a QUEUED or RUNNING task (at most TASK_MAX_ARTIFACT_MB)."
    )
    async def attach_artifact(
        self,
        info: Info,
        task_id: strawberry.ID,
        name: str,
        data_base64: str,
        content_type: str = "application/octet-stream",
    ) -> Artifact:
        services = info.context.services
        tid = _task_id(task_id, "taskId")
        check_name(name)
        check_content_type(content_type)
        try:
            data = base64.b64decode(data_base64, validate=True)
        except (binascii.Error, ValueError):
            raise BadInput(
                "dataBase64: not valid base64; encode the file's bytes with standard base64",
                field="dataBase64",
            ) from None
        limit = int(services.settings.task_max_artifact_mb * 1024 * 1024)
        if len(data) > limit:
            raise LimitExceeded(
                f"dataBase64: {len(data)} bytes is over TASK_MAX_ARTIFACT_MB "
                f"({services.settings.task_max_artifact_mb:g} MB)",
                field="dataBase64",
            )
        await queries.require(engine=services.engine, task_id=tid, owner=info.context.scope)
        row = await add_artifact(
            engine=services.engine,
            redis=services.redis,
            store=services.store,
            task_id=tid,
            name=name,
            data=data,
            content_type=content_type,
            max_bytes=limit,
            quota=Quota.of(services.settings),
        )
        return Artifact.from_row(row)

    @strawberry.mutation(
        description="Start a large upload to a QUEUED or RUNNING task: PUT the bytes to the "
        "returned url (presigned S3 when the store is S3), then call completeArtifactUpload. "
        "Until then it counts among the task's artifacts and reserves up to "
        "TASK_MAX_ARTIFACT_MB of your OWNER_MAX_ARTIFACT_MB; not completed within twice "
        "ARTIFACT_UPLOAD_TTL_SECONDS, it expires and its bytes are deleted."
    )
    async def create_artifact_upload(
        self,
        info: Info,
        task_id: strawberry.ID,
        name: str,
        content_type: str = "application/octet-stream",
    ) -> ArtifactUpload:
        services = info.context.services
        tid = _task_id(task_id, "taskId")
        check_name(name)
        check_content_type(content_type)
        await queries.require(engine=services.engine, task_id=tid, owner=info.context.scope)
        ttl = services.settings.artifact_upload_ttl_seconds
        upload = await begin_upload(
            services.engine,
            task_id=tid,
            name=name,
            content_type=content_type,
            ttl_seconds=ttl,
            max_bytes=int(services.settings.task_max_artifact_mb * 1024 * 1024),
            quota=Quota.of(services.settings),
        )
        url = await services.store.upload_url(upload.key, ttl)
        if url is None:
            url = f"{info.context.base_url}{services.signer.path(upload.id, ttl, 'upload')}"
        return ArtifactUpload(
            id=strawberry.ID(str(upload.id)),
            url=url,
            method="PUT",
            expires_at=datetime.now(UTC) + timedelta(seconds=ttl),
        )

    @strawberry.mutation(
        description="Finish an upload: the file becomes one of the task's artifacts."
    )
    async def complete_artifact_upload(
        self, info: Info, task_id: strawberry.ID, upload_id: strawberry.ID
    ) -> Artifact:
        services = info.context.services
        tid = _task_id(task_id, "taskId")
        await queries.require(engine=services.engine, task_id=tid, owner=info.context.scope)
        upload = await find_upload(services.engine, _task_id(upload_id, "uploadId"))
        if upload is None or upload.task_id != tid:
            raise NotFound(
                f"uploadId: no open upload {upload_id} for this task; it may have expired, "
                "start again with createArtifactUpload",
                field="uploadId",
            )
        row = await complete_upload(
            engine=services.engine,
            redis=services.redis,
            store=services.store,
            upload=upload,
            max_bytes=int(services.settings.task_max_artifact_mb * 1024 * 1024),
            quota=Quota.of(services.settings),
        )
        return Artifact.from_row(row)


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="A task's events after `after` (all when omitted), then live ones; "
        "completes after the terminal StatusChanged."
    )
    async def task_updates(
        self,
        info: Info,
        id: strawberry.ID,
        after: Annotated[
            str | None, strawberry.argument(description="The cursor of the last event you got.")
        ] = None,
    ) -> AsyncGenerator[TaskEvent, None]:
        services = info.context.services
        task_id = _task_id(id)
        await queries.require(engine=services.engine, task_id=task_id, owner=info.context.scope)
        after_id = decode_cursor(after) if after else None
        # a live event's result is shared between subscriptions of one shape and, where it
        # may, sent past strawberry's per-result pipeline (api.fanout)
        direct = Direct.of(info)
        async with info.context.subscription_slot():
            async for event in streams.task_events(
                engine=services.engine,
                hub=services.hub,
                task_id=task_id,
                after_id=after_id,
                quiet_seconds=services.settings.stream_quiet_seconds,
                deliver=direct.deliver if direct is not None else None,
            ):
                typed = typed_event(event, services.hub)
                if direct is not None:
                    payload = direct.payload(typed)
                    if payload is not None and await direct.send(payload):
                        continue  # sent past strawberry's per-result pipeline
                yield typed

    @strawberry.subscription(
        description="Every event of your tasks that match `filter` (type, label, creation "
        "time; status: a StatusChanged's new status, RUNNING for progress and logs), in "
        "commit order, live. Without `after` it starts now; with the cursor of the last "
        "event you got it resumes without a gap."
    )
    async def tasks_updates(
        self,
        info: Info,
        filter: TaskFilter | None = None,
        after: Annotated[
            str | None, strawberry.argument(description="The cursor of the last event you got.")
        ] = None,
    ) -> AsyncGenerator[TaskEvent, None]:
        services = info.context.services
        f = filter or TaskFilter()
        after_id = decode_cursor(after) if after else None
        async with info.context.subscription_slot():
            async for event in owner_streams.owner_events(
                engine=services.engine,
                hub=services.hub,
                owner=info.context.scope,
                after_id=after_id,
                filter=_domain_filter(f),
                quiet_seconds=services.settings.stream_quiet_seconds,
            ):
                yield event_type(event)


class TaskrunnerSchema(FanoutSchema):
    def process_errors(self, errors: Any, execution_context: Any = None) -> None:
        """Expected errors are answers, not incidents; `api.errors` logs the unexpected."""


@cache
def build_schema() -> TaskrunnerSchema:
    """The schema, built once per process. Its task inputs are made from the task catalog,
    which is read here: importing the api reads neither the catalog nor the settings."""
    build_task_inputs()  # TaskSpecInput: one field per task type
    return TaskrunnerSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        types=[StatusChanged, ProgressReported, LogAppended, ArtifactAdded],
        # the caches spare re-parsing and re-validating a query text already seen
        extensions=[
            ErrorCodes,
            GraphQLMetrics,
            QueryLimits,
            lambda: ParserCache(maxsize=512),  # factories share one module-level cache
            lambda: ValidationCache(maxsize=512),
        ],
        scalar_overrides={dict[str, Any]: JSON},
        execution_context_class=SharedEventExecutor,
    )
