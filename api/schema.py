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
from api.inputs import (
    TaskSpecInput,
    TaskSubmissionInput,
    as_callers,
    build_task_inputs,
    to_submission,
)
from api.limits import QueryLimits
from api.observability import GraphQLMetrics
from api.types.artifacts import Artifact, ArtifactUpload
from api.types.events import (
    ArtifactAdded,
    LogAppended,
    ProgressReported,
    StatusChanged,
    StepReady,
    TaskEvent,
    TickSkipped,
    WorkflowStatus,
    WorkflowStatusChanged,
    event_type,
)
from api.types.orchestration import (
    Queue,
    Schedule,
    ScheduleConnection,
    ScheduleEdge,
    ScheduleInput,
)
from api.types.service import Limits, Stats, TaskType, Worker
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
from api.types.workflows import Workflow, WorkflowConnection, WorkflowEdge, WorkflowInput
from api.workflow_inputs import to_workflow_spec
from taskrunner import (
    control,
    cron,
    heartbeats,
    owner_streams,
    queries,
    queues,
    schedules,
    stats,
    streams,
    workflows,
)
from taskrunner.artifacts.quotas import Quota
from taskrunner.artifacts.records import add_artifact, check_content_type, check_name
from taskrunner.artifacts.uploads import begin_upload, complete_upload, find_upload
from taskrunner.config import QUEUE_NAME, QUEUE_NAME_RULE
from taskrunner.errors import BadInput, Forbidden, LimitExceeded, NotFound, RateLimited
from taskrunner.events import decode_cursor
from taskrunner.logs import event
from taskrunner.models import TaskRecord
from taskrunner.states import TaskStatus
from taskrunner.submissions import Submission, submit
from workers.catalog import catalog

MAX_SCHEDULE_NAME = 200

log = logging.getLogger(__name__)


def _uuid_or_none(value: strawberry.ID) -> uuid.UUID | None:
    """An id as a lookup takes it: no such thing (None) when it is not a UUID."""
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


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
        actor=info.context.caller.actor,
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


async def _check_queues(info: Info, submissions: list[Submission], prefix: str = "") -> None:
    """With WORKER_QUEUES_STRICT: refuse a queue that is not `default`, a task type's,
    listed in WORKER_QUEUES, or served by a live worker (a typo would wait forever)."""
    settings = info.context.settings
    if not settings.worker_queues_strict:
        return
    known = {"default", *(t.queue for t in catalog().values()), *settings.queues()}
    unknown = [(i, s.queue) for i, s in enumerate(submissions) if s.queue not in known]
    if not unknown:
        return
    served = await queues.served(info.context.services.redis)
    for i, name in unknown:
        if name not in served:
            where = f"{prefix.format(i=i)}options.queue"
            raise BadInput(
                f"{where}: no worker serves queue {name!r} and WORKER_QUEUES_STRICT is on; "
                f"use one of {', '.join(sorted(known | served))}, or start a worker with "
                f"--queues {name}",
                field=where,
            )


def _schedule_id(value: strawberry.ID) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise BadInput(
            f"id: {value!r} is not a schedule id; ids are UUIDs returned by createSchedule",
            field="id",
        ) from None


def _schedule_spec(info: Info, given: ScheduleInput) -> schedules.ScheduleSpec:
    """Validate a ScheduleInput: its cadence, and its task as submitTask would (BAD_INPUT
    naming the field, nothing stored)."""
    name = given.name.strip()
    if not 1 <= len(name) <= MAX_SCHEDULE_NAME:
        raise BadInput(
            f"schedule.name: give 1 to {MAX_SCHEDULE_NAME} characters", field="schedule.name"
        )
    cadence = cron.cadence(given.cron, given.every_seconds, given.timezone)
    template = to_submission(given.task, given.options, info.context.settings, prefix="schedule.")
    schedules.check_template(template)
    as_callers(
        [template], info.context.caller, info.context.settings, "schedule.", default_webhook=False
    )
    return schedules.ScheduleSpec(
        name=name,
        cadence=cadence,
        template=template,
        overlap=given.overlap.value,
        catchup=given.catchup.value,
        paused=given.paused,
    )


def _workflow_id(value: strawberry.ID) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise BadInput(
            f"id: {value!r} is not a workflow id; ids are UUIDs returned by submitWorkflow",
            field="id",
        ) from None


def _require_admin(info: Info, operation: str) -> None:
    caller = info.context.caller
    if not caller.admin and not info.context.settings.auth_disabled:
        raise Forbidden(
            f"{operation} acts on a queue every owner shares, so it needs an admin key "
            "(`taskrunner keys create NAME --admin`)"
        )


def _aware(name: str, value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise BadInput(
            f"filter.{name}: {value.isoformat()} has no time zone; give one, e.g. "
            f"{value.isoformat()}Z",
            field=f"filter.{name}",
        )
    if value is not None:
        try:
            value.astimezone(UTC)  # PostgreSQL compares it in UTC
        except OverflowError:
            raise BadInput(
                f"filter.{name}: {value.isoformat()} is before year 1 in UTC; give a later time",
                field=f"filter.{name}",
            ) from None
    return value


def _domain_filter(f: TaskFilter) -> queries.TaskCriteria:
    return queries.TaskCriteria(
        status=tuple(TaskStatus(s) for s in f.status or ()),
        type=tuple(f.type or ()),
        label=f.label,
        created_after=_aware("createdAfter", f.created_after),
        created_before=_aware("createdBefore", f.created_before),
        ids=_filter_ids(f.ids),
        error_code=tuple(f.error_code or ()),
    )


MAX_FILTER_IDS = 1000


def _filter_ids(ids: list[strawberry.ID] | None) -> frozenset[uuid.UUID] | None:
    """None: any task; an empty list: none."""
    if ids is None:
        return None
    if len(ids) > MAX_FILTER_IDS:
        raise BadInput(
            f"filter.ids: {len(ids)} ids, more than {MAX_FILTER_IDS}; pass at most "
            f"{MAX_FILTER_IDS}, or filter by status, type or label",
            field="filter.ids",
        )
    return frozenset(_task_id(i, "filter.ids") for i in ids)


@strawberry.type
class Query:
    @strawberry.field(description="One task by id; null when there is none.")
    async def task(self, info: Info, id: strawberry.ID) -> Task | None:
        task_id = _uuid_or_none(id)
        if task_id is None:
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
            page_info=PageInfo.of(edges, page.has_next_page),
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
        description="Counts, throughput, failures and timings of your tasks (every owner's, "
        "for admins) since `since` (default: an hour ago), in slices of bucketSeconds: an "
        "overview's numbers and charts."
    )
    async def stats(
        self, info: Info, since: datetime | None = None, bucket_seconds: int = 60
    ) -> Stats:
        now = datetime.now(UTC)
        if since is not None and since.tzinfo is None:
            raise BadInput(
                f"since: {since.isoformat()} has no time zone; give one, e.g. {since.isoformat()}Z",
                field="since",
            )
        start = since if since is not None else now - timedelta(hours=1)
        found = await stats.stats(
            engine=info.context.services.engine,
            owner=info.context.scope,
            since=start,
            bucket_seconds=bucket_seconds,
            now=now,
        )
        return Stats.of(found)

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
                queues=w.queues,
                memory_bytes=w.memory_bytes,
            )
            for w in sorted(found, key=lambda w: w.started_at)
        ]

    @strawberry.field(description="One of your schedules by id; null when there is none.")
    async def schedule(self, info: Info, id: strawberry.ID) -> Schedule | None:
        schedule_id = _uuid_or_none(id)
        if schedule_id is None:
            return None
        found = await schedules.get(
            engine=info.context.services.engine, scope=info.context.scope, schedule_id=schedule_id
        )
        return Schedule.from_record(found) if found else None

    @strawberry.field(description="Your schedules, newest first.")
    async def schedules(
        self, info: Info, first: int | None = 20, after: str | None = None
    ) -> ScheduleConnection:
        size = page_size(first, info.context.settings)
        page = await schedules.list_schedules(
            engine=info.context.services.engine, scope=info.context.scope, first=size, after=after
        )
        edges = [
            ScheduleEdge(cursor=page.cursor_of(s), node=Schedule.from_record(s))
            for s in page.schedules
        ]
        return ScheduleConnection(
            edges=edges,
            page_info=PageInfo.of(edges, page.has_next_page),
        )

    @strawberry.field(description="One of your workflows by id; null when there is none.")
    async def workflow(self, info: Info, id: strawberry.ID) -> Workflow | None:
        workflow_id = _uuid_or_none(id)
        if workflow_id is None:
            return None
        found = await workflows.get(
            engine=info.context.services.engine, workflow_id=workflow_id, owner=info.context.scope
        )
        return Workflow.from_record(found) if found else None

    @strawberry.field(description="Your workflows, newest first; of a status, with a label.")
    async def workflows(
        self,
        info: Info,
        first: int | None = 20,
        after: str | None = None,
        status: list[WorkflowStatus] | None = None,
        label: str | None = None,
    ) -> WorkflowConnection:
        size = page_size(first, info.context.settings)
        page = await workflows.list_workflows(
            engine=info.context.services.engine,
            owner=info.context.scope,
            first=size,
            after=after,
            status=[s.value for s in status or ()],
            label=label,
        )
        edges = [
            WorkflowEdge(cursor=page.cursor_of(w), node=Workflow.from_record(w))
            for w in page.workflows
        ]
        return WorkflowConnection(
            edges=edges,
            page_info=PageInfo.of(edges, page.has_next_page),
        )

    @strawberry.field(
        description="The named queues: `default`, those of the task types, those with tasks "
        "waiting or running, paused ones and those live workers serve; by name. Counts are "
        "of your tasks (of all, for admins)."
    )
    async def queues(self, info: Info) -> list[Queue]:
        services = info.context.services
        known = ["default", *(t.queue for t in catalog().values())]
        found = await queues.describe(services.engine, services.redis, info.context.scope, known)
        return [Queue.from_info(q) for q in found]


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Submit one task; it is QUEUED when this returns.")
    async def submit_task(
        self, info: Info, task: TaskSpecInput, options: TaskOptionsInput | None = None
    ) -> Task:
        services = info.context.services
        (submission,) = as_callers(
            [to_submission(task, options, services.settings)],
            info.context.caller,
            services.settings,
        )
        await _check_queues(info, [submission])
        await _take_rate(info, 1)
        (row,) = await submit(
            engine=services.engine,
            redis=services.redis,
            pool=services.redis,
            owner=info.context.owner,
            submissions=[submission],
            actor=info.context.caller.actor,
            crash_after_commit=services.settings.test_crash_after_commit,
            key_ttl=services.settings.idempotency_key_ttl(),
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
        submissions = as_callers(
            [
                to_submission(item.task, item.options, services.settings, prefix=f"tasks[{i}].")
                for i, item in enumerate(tasks)
            ],
            info.context.caller,
            services.settings,
            "tasks[{i}].",
        )
        await _check_queues(info, submissions, "tasks[{i}].")
        await _take_rate(info, len(submissions))
        rows = await submit(
            engine=services.engine,
            redis=services.redis,
            pool=services.redis,
            owner=info.context.owner,
            submissions=submissions,
            actor=info.context.caller.actor,
            crash_after_commit=services.settings.test_crash_after_commit,
            key_ttl=services.settings.idempotency_key_ttl(),
        )
        return [Task.from_row(r) for r in rows]

    @strawberry.mutation(
        description="Submit a workflow: a DAG of steps, checked whole and created in one "
        "transaction (all or none). Steps without dependsOn start; the others wait QUEUED "
        "until every step they depend on SUCCEEDED. Counts each step against TASKS_PER_MINUTE."
    )
    async def submit_workflow(self, info: Info, workflow: WorkflowInput) -> Workflow:
        spec = to_workflow_spec(workflow, info.context.settings)
        (found,) = await _submit_workflows(info, [spec], ["workflow"])
        return found

    @strawberry.mutation(
        description="Submit several workflows at once, all or none (one transaction): at "
        "most MAX_BATCH_SIZE of them with MAX_WORKFLOW_STEPS steps in all; errors name "
        "`workflows[i]`. Each as submitWorkflow; the answer is in the same order."
    )
    async def submit_workflows(self, info: Info, workflows: list[WorkflowInput]) -> list[Workflow]:
        settings = info.context.settings
        if not 1 <= len(workflows) <= settings.max_batch_size:
            raise LimitExceeded(
                f"workflows: give 1 to MAX_BATCH_SIZE ({settings.max_batch_size}) workflows, "
                f"got {len(workflows)}; split the batch",
                field="workflows",
            )
        steps = sum(len(w.steps) for w in workflows)
        if steps > settings.max_workflow_steps:
            raise LimitExceeded(
                f"workflows: {steps} steps in all, over MAX_WORKFLOW_STEPS "
                f"({settings.max_workflow_steps}); split the batch",
                field="workflows",
            )
        wheres = [f"workflows[{i}]" for i in range(len(workflows))]
        specs = [
            to_workflow_spec(w, settings, where) for w, where in zip(workflows, wheres, strict=True)
        ]
        return await _submit_workflows(info, specs, wheres)

    @strawberry.mutation(
        description="Cancel every unfinished step of a RUNNING workflow (running ones are "
        "interrupted); it ends CANCELLED. A finished workflow: CONFLICT."
    )
    async def cancel_workflow(self, info: Info, id: strawberry.ID) -> Workflow:
        services = info.context.services
        found = await workflows.cancel(
            engine=services.engine,
            redis=services.redis,
            workflow_id=_workflow_id(id),
            owner=info.context.scope,
            actor=info.context.caller.actor,
        )
        return Workflow.from_record(found)

    @strawberry.mutation(
        description="Run a FAILED or CANCELLED workflow's FAILED and CANCELLED steps again "
        "(and their dependents once ready); SUCCEEDED steps keep their results. Counts those "
        "steps against TASKS_PER_MINUTE."
    )
    async def retry_workflow(self, info: Info, id: strawberry.ID) -> Workflow:
        services = info.context.services
        workflow_id = _workflow_id(id)
        await workflows.require(
            engine=services.engine, workflow_id=workflow_id, owner=info.context.scope
        )
        cost = await workflows.retry_cost(services.engine, workflow_id)
        if cost:
            await _take_rate(info, cost)
        found = await workflows.retry(
            engine=services.engine,
            redis=services.redis,
            workflow_id=workflow_id,
            owner=info.context.scope,
            actor=info.context.caller.actor,
        )
        return Workflow.from_record(found)

    @strawberry.mutation(
        description="Cancel a QUEUED task (it never runs) or a RUNNING one (it is interrupted)."
    )
    async def cancel_task(self, info: Info, id: strawberry.ID) -> Task:
        return await _change_task(info, id, control.cancel)

    @strawberry.mutation(
        description="Run a FAILED or CANCELLED task again as a new attempt; its events keep "
        "the whole history. Counts against TASKS_PER_MINUTE like a submission. A workflow's "
        "step: CONFLICT (retryWorkflow runs it and its dependents)."
    )
    async def retry_task(self, info: Info, id: strawberry.ID) -> Task:
        _task_id(id)  # a malformed id is BAD_INPUT before it costs anything
        await _take_rate(info, 1)  # a retry runs the task again: as costly as a new one
        return await _change_task(info, id, control.retry)

    @strawberry.mutation(
        description="Cancel every QUEUED or RUNNING task of yours that `filter` matches, at "
        "most MAX_BULK_ACTION (more: LIMIT_EXCEEDED, nothing cancelled); returns how many."
    )
    async def cancel_tasks(self, info: Info, filter: TaskFilter) -> int:
        services = info.context.services
        return await control.cancel_many(
            engine=services.engine,
            redis=services.redis,
            pool=services.redis,
            owner=info.context.scope,
            filter=_domain_filter(filter),
            most=services.settings.max_bulk_action,
            actor=info.context.caller.actor,
        )

    @strawberry.mutation(
        description="Retry every FAILED or CANCELLED task of yours that `filter` matches, at "
        "most MAX_BULK_ACTION (more: LIMIT_EXCEEDED, nothing retried); returns how many. "
        "Workflows' steps are left out (retryWorkflow). Counts against TASKS_PER_MINUTE."
    )
    async def retry_tasks(self, info: Info, filter: TaskFilter) -> int:
        services = info.context.services
        criteria = _domain_filter(filter)
        most = services.settings.max_bulk_action
        matched = await queries.matching_tasks(
            engine=services.engine,
            owner=info.context.scope,
            filter=criteria,
            statuses=(TaskStatus.FAILED, TaskStatus.CANCELLED),
            most=most + 1,
            steps=False,
        )
        if matched and len(matched) <= most:
            await _take_rate(info, len(matched))
        return await control.retry_many(
            engine=services.engine,
            redis=services.redis,
            pool=services.redis,
            owner=info.context.scope,
            filter=criteria,
            most=most,
            actor=info.context.caller.actor,
        )

    @strawberry.mutation(
        description="Pause a named queue (admin keys): running tasks finish, nothing new "
        "starts from it until resumeQueue."
    )
    async def pause_queue(self, info: Info, name: str) -> Queue:
        return await _set_queue_paused(info, name, True)

    @strawberry.mutation(description="Resume a paused queue (admin keys): its tasks start.")
    async def resume_queue(self, info: Info, name: str) -> Queue:
        return await _set_queue_paused(info, name, False)

    @strawberry.mutation(
        description="Create a schedule: its task is validated now, as submitTask would. At "
        "most MAX_SCHEDULES_PER_OWNER (see `limits`)."
    )
    async def create_schedule(self, info: Info, schedule: ScheduleInput) -> Schedule:
        services = info.context.services
        spec = _schedule_spec(info, schedule)
        await _check_queues(info, [spec.template], "schedule.")
        created = await schedules.create(
            services.engine,
            owner=info.context.owner,
            key_id=info.context.caller.key_id,
            spec=spec,
            most=services.settings.max_schedules_per_owner,
            actor=info.context.caller.actor,
        )
        return Schedule.from_record(created)

    @strawberry.mutation(
        description="Replace a schedule's definition; its next tick is computed from now."
    )
    async def update_schedule(
        self, info: Info, id: strawberry.ID, schedule: ScheduleInput
    ) -> Schedule:
        schedule_id = _schedule_id(id)
        spec = _schedule_spec(info, schedule)
        await _check_queues(info, [spec.template], "schedule.")
        updated = await schedules.update(
            info.context.services.engine,
            scope=info.context.scope,
            schedule_id=schedule_id,
            spec=spec,
            actor=info.context.caller.actor,
        )
        return Schedule.from_record(updated)

    @strawberry.mutation(description="Stop a schedule from firing until resumeSchedule.")
    async def pause_schedule(self, info: Info, id: strawberry.ID) -> Schedule:
        found = await schedules.set_paused(
            info.context.services.engine,
            scope=info.context.scope,
            schedule_id=_schedule_id(id),
            paused=True,
            actor=info.context.caller.actor,
        )
        return Schedule.from_record(found)

    @strawberry.mutation(
        description="Fire a paused schedule again, from its next tick after now (ticks that "
        "fell while it was paused do not fire)."
    )
    async def resume_schedule(self, info: Info, id: strawberry.ID) -> Schedule:
        found = await schedules.set_paused(
            info.context.services.engine,
            scope=info.context.scope,
            schedule_id=_schedule_id(id),
            paused=False,
            actor=info.context.caller.actor,
        )
        return Schedule.from_record(found)

    @strawberry.mutation(description="Delete a schedule; the tasks it fired stay.")
    async def delete_schedule(self, info: Info, id: strawberry.ID) -> bool:
        return await schedules.delete(
            info.context.services.engine, scope=info.context.scope, schedule_id=_schedule_id(id)
        )

    @strawberry.mutation(
        description="Run a schedule's task now, outside its cadence (scheduledFor: now). "
        "Counts against TASKS_PER_MINUTE."
    )
    async def trigger_schedule(self, info: Info, id: strawberry.ID) -> Task:
        services = info.context.services
        schedule_id = _schedule_id(id)
        await _take_rate(info, 1)
        row = await schedules.trigger(
            services.engine,
            services.redis,
            scope=info.context.scope,
            schedule_id=schedule_id,
            actor=info.context.caller.actor,
        )
        return Task.from_row(row)

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

    @strawberry.subscription(
        description="Every event of a workflow's steps, its own WorkflowStatusChanged among "
        "them, in commit order: from the first without `after`, after that cursor with it "
        "(no gap, no repeat); completes after the event that ends the workflow."
    )
    async def workflow_updates(
        self,
        info: Info,
        id: strawberry.ID,
        after: Annotated[
            str | None, strawberry.argument(description="The cursor of the last event you got.")
        ] = None,
    ) -> AsyncGenerator[TaskEvent, None]:
        services = info.context.services
        found = await workflows.require(
            engine=services.engine, workflow_id=_workflow_id(id), owner=info.context.scope
        )
        after_id = decode_cursor(after) if after else None
        async with info.context.subscription_slot():
            async for event in workflows.events(
                engine=services.engine,
                hub=services.hub,
                workflow=found,
                after_id=after_id,
                quiet_seconds=services.settings.stream_quiet_seconds,
            ):
                yield event_type(event)


async def _submit_workflows(
    info: Info, specs: list[workflows.WorkflowSpec], wheres: list[str]
) -> list[Workflow]:
    """Check the steps' queues, count the steps against TASKS_PER_MINUTE, submit."""
    services = info.context.services
    for spec, where in zip(specs, wheres, strict=True):
        steps = [s.submission for s in spec.steps]
        as_callers(
            steps,
            info.context.caller,
            services.settings,
            f"{where}.steps[{{i}}].",
            default_webhook=False,
        )  # only checks: the steps get the key in `submit`
        await _check_queues(info, steps, f"{where}.steps[{{i}}].")
    await _take_rate(info, sum(len(spec.steps) for spec in specs))
    found = await workflows.submit(
        engine=services.engine,
        pool=services.redis,
        owner=info.context.owner,
        specs=specs,
        key_id=info.context.caller.key_id,
        actor=info.context.caller.actor,
        key_ttl=services.settings.idempotency_key_ttl(),
    )
    return [Workflow.from_record(w) for w in found]


async def _set_queue_paused(info: Info, name: str, paused: bool) -> Queue:
    _require_admin(info, "pauseQueue" if paused else "resumeQueue")
    if not QUEUE_NAME.match(name):
        raise BadInput(f"name: {name!r} is not a queue name; use {QUEUE_NAME_RULE}", field="name")
    services = info.context.services
    await queues.set_paused(
        services.engine, services.redis, name, paused, actor=info.context.caller.actor
    )
    found = await queues.describe(services.engine, services.redis, info.context.scope, [name])
    return Queue.from_info(next(q for q in found if q.name == name))


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
        types=[
            StatusChanged,
            ProgressReported,
            LogAppended,
            ArtifactAdded,
            TickSkipped,
            StepReady,
            WorkflowStatusChanged,
        ],
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
