"""The Strawberry schema: queries, mutations and subscriptions of the contract."""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import logging
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
import strawberry
from graphql import ExecutionResult as GraphQLExecutionResult
from strawberry.extensions import ParserCache, ValidationCache
from strawberry.scalars import JSON
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from api.context import Context, Info
from api.errors import ErrorCodes
from api.inputs import TaskSpecInput, TaskSubmissionInput, to_submission
from api.limits import QueryLimits
from api.observability import GraphQLMetrics
from api.types import (
    Artifact,
    ArtifactAdded,
    ArtifactUpload,
    Limits,
    LogAppended,
    PageInfo,
    Processed,
    ProgressReported,
    StatusChanged,
    Task,
    TaskConnection,
    TaskEdge,
    TaskEvent,
    TaskFilter,
    TaskOptionsInput,
    TaskType,
    Worker,
    event_type,
)
from taskrunner import heartbeats, streams
from taskrunner import tasks as ops
from taskrunner.artifacts import add_artifact, begin_upload, complete_upload, find_upload
from taskrunner.errors import BadInput, LimitExceeded, NotFound, RateLimited
from taskrunner.events import Event, decode_cursor
from taskrunner.logs import event
from taskrunner.models import Task as TaskRow
from taskrunner.states import TaskStatus
from workers.catalog import catalog

MAX_PAGE = 100

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
    info: Info, id: strawberry.ID, operation: Callable[..., Awaitable[TaskRow]]
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


def _domain_filter(f: TaskFilter) -> ops.TaskFilter:
    return ops.TaskFilter(
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
        row = await ops.get(
            engine=info.context.services.engine, task_id=task_id, owner=info.context.scope
        )
        return Task.from_row(row) if row else None

    @strawberry.field(description="Your tasks, newest first, `first` (<= 100) at a time.")
    async def tasks(
        self,
        info: Info,
        filter: TaskFilter | None = None,
        first: int | None = 20,
        after: str | None = None,
    ) -> TaskConnection:
        if first is None or not 1 <= first <= MAX_PAGE:
            raise BadInput(f"first: must be between 1 and {MAX_PAGE}, got {first}", field="first")
        f = filter or TaskFilter()
        page = await ops.list_tasks(
            engine=info.context.services.engine,
            owner=info.context.scope,
            filter=_domain_filter(f),
            first=first,
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
        done_at, latest = await ops.processed(
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
        visible = await ops.visible_ids(
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
        (row,) = await ops.submit(
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
        rows = await ops.submit(
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
        return await _change_task(info, id, ops.cancel)

    @strawberry.mutation(
        description="Run a FAILED or CANCELLED task again as a new attempt; its events keep "
        "the whole history."
    )
    async def retry_task(self, info: Info, id: strawberry.ID) -> Task:
        return await _change_task(info, id, ops.retry)

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
        if not 1 <= len(name) <= 200:
            raise BadInput("name: give 1 to 200 characters", field="name")
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
        await ops.require(engine=services.engine, task_id=tid, owner=info.context.scope)
        row = await add_artifact(
            engine=services.engine,
            redis=services.redis,
            store=services.store,
            task_id=tid,
            name=name,
            data=data,
            content_type=content_type,
            max_bytes=limit,
        )
        return Artifact.from_row(row)

    @strawberry.mutation(
        description="Start a large upload to a QUEUED or RUNNING task: PUT the bytes to the "
        "returned url (presigned S3 when the store is S3), then call completeArtifactUpload."
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
        if not 1 <= len(name) <= 200:
            raise BadInput("name: give 1 to 200 characters", field="name")
        await ops.require(engine=services.engine, task_id=tid, owner=info.context.scope)
        ttl = services.settings.artifact_url_ttl_seconds
        upload = await begin_upload(
            services.redis, task_id=tid, name=name, content_type=content_type, ttl_seconds=ttl
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
        await ops.require(engine=services.engine, task_id=tid, owner=info.context.scope)
        upload = await find_upload(services.redis, _task_id(upload_id, "uploadId"))
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
        )
        return Artifact.from_row(row)


# --- subscriptions -----------------------------------------------------------------------
#
# A live event reaches every subscription of its task as the same `Event` object (the hub
# validates it once; a backlog read at once by several subscriptions is shared too, see
# `hub.shared`). Its GraphQL object is then made once (`_shared.event`), and the
# selection set is executed on it once per shape: subscriptions with the same operation
# (document), variables, caller and base URL take the same result (`SharedEventExecutor`)
# instead of running 1,000 identical executions for 1,000 subscribers (py-spy: about 40%
# of the api's CPU per delivery). Anything else (another document, other variables, another
# API key or owner, a backlog event read by one subscription) executes on its own.

SHARED_EVENTS = 1024  # live events whose GraphQL object and results are kept for sharing


class _SharedEvents:
    """The GraphQL object of each recent live event and the results executed on it, by
    object identity (an entry holds its key objects, so their ids cannot be reused while it
    lives); the oldest entries are dropped first."""

    def __init__(self, size: int = SHARED_EVENTS) -> None:
        self.size = size
        self._objects: dict[int, tuple[Event, TaskEvent]] = {}
        self._results: dict[int, tuple[TaskEvent, dict[Any, Any]]] = {}

    def get(self, event: Event) -> TaskEvent | None:
        entry = self._objects.get(id(event))
        return entry[1] if entry is not None and entry[0] is event else None

    def event(self, event: Event) -> TaskEvent:
        typed = self.get(event)
        if typed is not None:
            return typed
        typed = event_type(event)
        self._objects[id(event)] = (event, typed)
        self._results[id(typed)] = (typed, {})
        while len(self._objects) > self.size:
            _, oldest = self._objects.pop(next(iter(self._objects)))
            self._results.pop(id(oldest), None)
        return typed

    def results(self, payload: object) -> dict[Any, Any] | None:
        """The results shared on `payload`, when it is the object of a live event."""
        entry = self._results.get(id(payload))
        return entry[1] if entry is not None and entry[0] is payload else None


_shared = _SharedEvents()


def _share_key(executor: StrawberryGraphQLCoreExecutionContext) -> tuple[Any, ...] | None:
    """What a subscription's result on an event depends on besides the event: operation,
    variables, caller and base URL. None: never share (a resolver middleware, or variables
    that do not serialize)."""
    context = executor.context_value
    manager = executor.middleware_manager
    if (
        not isinstance(context, Context)
        or context.principal is None
        or (manager is not None and manager.middlewares)
        or executor.operation_extensions
    ):
        return None
    try:
        variables = orjson.dumps(executor.variable_values.coerced, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return None
    principal = context.principal
    return (
        id(executor.operation),  # the entry holds the operation: see _Executed
        variables,
        principal.key_id,
        principal.owner,
        principal.admin,
        context.base_url,
    )


class _Executed:
    """A subscription's selection set executed on one live event; the per-event "executor"
    of every subscription with the same `_share_key` (graphql-core asks it for the result)."""

    __slots__ = ("operation", "result")

    def __init__(self, operation: object, result: GraphQLExecutionResult) -> None:
        self.operation, self.result = operation, result  # holding operation: see _share_key

    def execute_operation(self, serially: bool | None = None) -> GraphQLExecutionResult:
        return self.result  # read-only downstream: strawberry copies it into its own result


class _Executing:
    """Like `_Executed` while an async resolver (e.g. `Artifact.url`) still runs: the others
    await it; if it fails, each executes on its own."""

    __slots__ = ("fallback", "future", "operation")

    def __init__(
        self,
        operation: object,
        future: asyncio.Future[GraphQLExecutionResult],
        fallback: Callable[[], Any],
    ) -> None:
        self.operation, self.future, self.fallback = operation, future, fallback

    async def execute_operation(self, serially: bool | None = None) -> GraphQLExecutionResult:
        try:
            return await asyncio.shield(self.future)  # one leaving cancels no other
        except Exception:
            outcome = self.fallback().execute_operation(serially)
            result: GraphQLExecutionResult = (
                await outcome if inspect.isawaitable(outcome) else outcome
            )
            return result


_UNKNOWN: Any = object()


class SharedEventExecutor(StrawberryGraphQLCoreExecutionContext):
    """strawberry's executor; a subscription's per-event executions are shared (above)."""

    _share: tuple[Any, ...] | None = _UNKNOWN

    def build_per_event_executor(self, payload: Any) -> Any:
        results = _shared.results(payload)
        if results is None:
            return super().build_per_event_executor(payload)
        share = self._share
        if share is _UNKNOWN:
            share = self._share = _share_key(self)
        if share is None:
            return super().build_per_event_executor(payload)
        entry = results.get(share)
        if entry is None or entry.operation is not self.operation:
            entry = results[share] = self._execute(payload)
        return entry

    def _execute(self, payload: Any) -> _Executed | _Executing:
        def own() -> Any:
            return super(SharedEventExecutor, self).build_per_event_executor(payload)

        outcome = own().execute_operation(False)  # as graphql-core's execute_subscription_event
        if self.is_awaitable(outcome):
            return _Executing(self.operation, asyncio.ensure_future(outcome), own)
        return _Executed(self.operation, outcome)


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
        await ops.require(engine=services.engine, task_id=task_id, owner=info.context.scope)
        after_id = decode_cursor(after) if after else None
        with info.context.subscription_slot():
            async for event in streams.task_events(
                engine=services.engine,
                hub=services.hub,
                task_id=task_id,
                after_id=after_id,
                quiet_seconds=services.settings.stream_quiet_seconds,
            ):
                yield _shared.get(event) or (
                    _shared.event(event) if services.hub.shared(event) else event_type(event)
                )

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
        with info.context.subscription_slot():
            async for event in streams.owner_events(
                engine=services.engine,
                hub=services.hub,
                owner=info.context.scope,
                after_id=after_id,
                filter=_domain_filter(f),
                quiet_seconds=services.settings.stream_quiet_seconds,
            ):
                yield event_type(event)


class TaskrunnerSchema(strawberry.Schema):
    def process_errors(self, errors: Any, execution_context: Any = None) -> None:
        """Expected errors are answers, not incidents; `api.errors` logs the unexpected."""


schema = TaskrunnerSchema(
    query=Query,
    mutation=Mutation,
    subscription=Subscription,
    types=[StatusChanged, ProgressReported, LogAppended, ArtifactAdded],
    # The caches spare re-parsing and re-validating a query text already seen: half of
    # the api's CPU per request otherwise (profiled with py-spy).
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
