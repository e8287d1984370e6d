"""The Strawberry schema: queries, mutations and subscriptions of the contract."""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import logging
import uuid
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
import strawberry
from graphql import ExecutionResult as GraphQLExecutionResult
from strawberry.extensions import ParserCache, SchemaExtension, ValidationCache
from strawberry.extensions.context import StreamResultContextManager
from strawberry.extensions.runner import SchemaExtensionsRunner
from strawberry.scalars import JSON
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.types.execution import ExecutionContext
from strawberry.utils.await_maybe import await_maybe

from api import fanout
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
    page_size,
)
from taskrunner import heartbeats, streams
from taskrunner import tasks as ops
from taskrunner.artifacts import (
    Quota,
    add_artifact,
    begin_upload,
    check_content_type,
    check_name,
    complete_upload,
    find_upload,
)
from taskrunner.errors import BadInput, LimitExceeded, NotFound, RateLimited
from taskrunner.events import Event, decode_cursor
from taskrunner.hub import EventHub
from taskrunner.logs import event
from taskrunner.models import Task as TaskRow
from taskrunner.states import TaskStatus
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
        page = await ops.list_tasks(
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
        "the whole history. Counts against TASKS_PER_MINUTE like a submission."
    )
    async def retry_task(self, info: Info, id: strawberry.ID) -> Task:
        _task_id(id)  # a malformed id is BAD_INPUT before it costs anything
        await _take_rate(info, 1)  # a retry runs the task again: as costly as a new one
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
        await ops.require(engine=services.engine, task_id=tid, owner=info.context.scope)
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
        await ops.require(engine=services.engine, task_id=tid, owner=info.context.scope)
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
#
# Over graphql-transport-ws with `api.fanout` (its handler and `api.ws_transport`), such a
# shared, error-free result is also encoded once and sent past strawberry's per-result
# pipeline (`_Direct`): from the hub's dispatch while the subscription waits for live
# events, else from the subscription's task. py-spy, 1,000 subscribers: ~50 us of api CPU
# per delivery before, ~11-13 us with it.

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


def _encoded(
    entry: _Executed | _Executing, result: GraphQLExecutionResult, delivery: fanout.Delivery
) -> str | None:
    """The `next` payload of a shared result, encoded once per entry (and view); None when
    it has errors (those go through strawberry, which classifies them)."""
    if result.errors:
        return None
    cached = entry.encoded
    if cached is None or cached[0] is not delivery.view:
        cached = entry.encoded = (delivery.view, delivery.payload(result.data))
    return cached[1]


class _ShareKey:
    """One object per distinct `_share_key` while any executor or result uses it: shared
    results are looked up by identity, without hashing the key (its UUID hashes in
    Python) once per subscriber and event."""

    __slots__ = ("__weakref__", "value")

    def __init__(self, value: tuple[Any, ...]) -> None:
        self.value = value


_share_keys: weakref.WeakValueDictionary[tuple[Any, ...], _ShareKey] = weakref.WeakValueDictionary()


def _interned(share: tuple[Any, ...] | None) -> _ShareKey | None:
    if share is None:
        return None
    key = _share_keys.get(share)
    if key is None:
        key = _share_keys[share] = _ShareKey(share)
    return key


class _Executed:
    """A subscription's selection set executed on one live event; the per-event "executor"
    of every subscription with the same `_share_key` (graphql-core asks it for the result)."""

    __slots__ = ("encoded", "operation", "result")

    def __init__(self, operation: object, result: GraphQLExecutionResult) -> None:
        self.operation, self.result = operation, result  # holding operation: see _share_key
        self.encoded: tuple[object, str | None] | None = None  # (view, payload): _encoded

    def execute_operation(self, serially: bool | None = None) -> GraphQLExecutionResult:
        return self.result  # read-only downstream: strawberry copies it into its own result


class _Executing:
    """Like `_Executed` while an async resolver (e.g. `Artifact.url`) still runs: the others
    await it; if it fails, each executes on its own."""

    __slots__ = ("encoded", "fallback", "future", "operation")

    def __init__(
        self,
        operation: object,
        future: asyncio.Future[GraphQLExecutionResult],
        fallback: Callable[[], Any],
    ) -> None:
        self.operation, self.future, self.fallback = operation, future, fallback
        self.encoded: tuple[object, str | None] | None = None  # (view, payload): _encoded

    async def shared_result(self) -> GraphQLExecutionResult | None:
        """The shared result, or None if its execution failed."""
        try:
            return await asyncio.shield(self.future)
        except Exception:
            return None

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

    _share: _ShareKey | None = _UNKNOWN

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        delivery = fanout.current()
        if delivery is not None and delivery.executor is None:
            delivery.executor = self  # the operation's (per-event executors come later)

    def build_per_event_executor(self, payload: Any) -> Any:
        entry = self.shared_entry(payload)
        return entry if entry is not None else super().build_per_event_executor(payload)

    def shared_entry(self, payload: Any) -> _Executed | _Executing | None:
        """The shared execution of the selection set on `payload`, a live event's object;
        None when it is not one, or this subscription's results are not shared."""
        results = _shared.results(payload)
        if results is None:
            return None
        share = self._share
        if share is _UNKNOWN:
            share = self._share = _interned(_share_key(self))
        if share is None:
            return None
        entry: _Executed | _Executing | None = results.get(share)
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


class _Direct:
    """A subscription's direct delivery (`api.fanout`): which live events' results may go
    past strawberry's per-result pipeline, and their encoded payloads."""

    __slots__ = ("delivery", "executor", "hub", "operation", "runner")

    def __init__(
        self, delivery: fanout.Delivery, executor: SharedEventExecutor, hub: EventHub
    ) -> None:
        self.delivery, self.executor, self.hub = delivery, executor, hub
        self.operation, self.runner = delivery.operation, delivery.runner

    @classmethod
    def of(cls, info: Info) -> _Direct | None:
        """The subscription's direct delivery, when it has one it may use."""
        delivery = fanout.current()
        if delivery is None or not delivery.usable:
            return None
        executor = delivery.executor
        if (
            not isinstance(executor, SharedEventExecutor)
            or executor.context_value is not info.context
            or executor.operation is not info.operation
        ):
            return None
        return cls(delivery, executor, info.context.services.hub)

    def payload(self, typed: TaskEvent) -> str | _Executing | None:
        """The encoded `next` payload of `typed` when it is a live event's shared,
        error-free result and the operation goes on (`_Executing`: await `shared` first);
        None: it goes through strawberry."""
        if self.operation.completed or self.runner.execution_context.extensions_results:
            return None
        entry = self.executor.shared_entry(typed)
        if entry is None:
            return None
        if isinstance(entry, _Executed):
            return _encoded(entry, entry.result, self.delivery)
        return entry

    def deliver(self, event: Event) -> bool:
        """Send a live event now, from the hub (see `streams.task_events`), when it is a
        shared, error-free result the socket takes at once; False: the stream yields it."""
        typed = _shared.get(event)
        if typed is None:
            if not self.hub.shared(event):
                return False  # not a live event several subscriptions got
            typed = _shared.event(event)
        payload = self.payload(typed)
        return isinstance(payload, str) and self.delivery.send_now(payload)

    async def shared(self, entry: _Executing) -> str | None:
        result = await entry.shared_result()
        return None if result is None else _encoded(entry, result, self.delivery)


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
        direct = _Direct.of(info)
        async with info.context.subscription_slot():
            async for event in streams.task_events(
                engine=services.engine,
                hub=services.hub,
                task_id=task_id,
                after_id=after_id,
                quiet_seconds=services.settings.stream_quiet_seconds,
                deliver=direct.deliver if direct is not None else None,
            ):
                typed = _shared.get(event) or (
                    _shared.event(event) if services.hub.shared(event) else event_type(event)
                )
                if direct is not None:
                    payload = direct.payload(typed)
                    if isinstance(payload, _Executing):
                        payload = await direct.shared(payload)
                    if payload is not None:  # sent past strawberry's per-result pipeline
                        await direct.delivery.send(payload)
                        continue
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
            async for event in streams.owner_events(
                engine=services.engine,
                hub=services.hub,
                owner=info.context.scope,
                after_id=after_id,
                filter=_domain_filter(f),
                quiet_seconds=services.settings.stream_quiet_seconds,
            ):
                yield event_type(event)


class _NoStreamResultHooks(StreamResultContextManager):
    """`on_stream_result` when no extension has that hook: nothing to enter or exit."""

    def __init__(self) -> None:
        self.hooks = []

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc_info: object) -> None:
        return None


_NO_STREAM_RESULT_HOOKS = _NoStreamResultHooks()


class ExtensionsRunner(SchemaExtensionsRunner):
    """strawberry's runner without the per-result work no extension asks for: it runs once
    per subscription event (1,000 times for one event to 1,000 subscribers). Hooks are
    found as strawberry finds them (a method overriding SchemaExtension's); an extension
    with `on_stream_result` or `get_results` gets exactly strawberry's treatment."""

    def __init__(
        self, execution_context: ExecutionContext, extensions: list[SchemaExtension]
    ) -> None:
        super().__init__(execution_context=execution_context, extensions=extensions)
        delivery = fanout.current()
        if delivery is not None and delivery.runner is None:
            delivery.runner = self  # the operation's
        self._results_of = [
            e for e in self.extensions if type(e).get_results is not SchemaExtension.get_results
        ]
        self._stream_hooks = any(
            type(e).on_stream_result is not SchemaExtension.on_stream_result
            for e in self.extensions
        )

    @property
    def plain(self) -> bool:
        """Whether a result's payload is just its data and errors: no extension adds
        results or has a per-result hook (`api.fanout` needs that)."""
        return (
            not self._results_of
            and not self._stream_hooks
            and not self.execution_context.extensions_results
        )

    def on_stream_result(self, result: Any) -> StreamResultContextManager:
        if self._stream_hooks:
            return super().on_stream_result(result)
        return _NO_STREAM_RESULT_HOOKS

    async def get_extensions_results(self, ctx: ExecutionContext) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for extension in self._results_of:
            data.update(await await_maybe(extension.get_results()))
        data.update(ctx.extensions_results)
        return data


class TaskrunnerSchema(strawberry.Schema):
    def process_errors(self, errors: Any, execution_context: Any = None) -> None:
        """Expected errors are answers, not incidents; `api.errors` logs the unexpected."""

    def create_extensions_runner(
        self, execution_context: ExecutionContext, extensions: list[SchemaExtension]
    ) -> SchemaExtensionsRunner:
        return ExtensionsRunner(execution_context, extensions)


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
