"""The GraphQL types of the service itself: its task types, live workers and limits."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import strawberry
from strawberry.scalars import JSON
from strawberry.utils.str_converters import to_camel_case

from api.types import status as _status  # noqa: F401  (registers TaskStatus)
from taskrunner import stats
from taskrunner.config import Settings
from taskrunner.states import TaskStatus


@strawberry.type(description="A live worker, from its heartbeat.")
class Worker:
    id: str
    host: str
    pid: int
    started_at: datetime
    last_heartbeat_at: datetime
    running_task_ids: list[strawberry.ID]
    queues: list[str] = strawberry.field(description="The named queues it serves.")
    memory_bytes: float | None = strawberry.field(
        description="Its resident memory with its process tasks' children, as of its last "
        "heartbeat (null from a worker too old to report it)."
    )


@strawberry.type(description="A kind of task you can submit.")
class TaskType:
    name: str
    description: str
    input_schema: JSON = strawberry.field(description="JSON Schema of the task's input.")


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

    max_schedules_per_owner: int = strawberry.field(
        description="Most schedules one owner may have."
    )
    schedule_max_catchup: int = strawberry.field(
        description="Most missed ticks a schedule with catchup ALL fires after downtime."
    )
    max_bulk_action: int = strawberry.field(
        description="Most tasks one cancelTasks or retryTasks changes."
    )
    max_workflow_steps: int = strawberry.field(description="Most steps one workflow may have.")

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
            max_schedules_per_owner=settings.max_schedules_per_owner,
            schedule_max_catchup=settings.schedule_max_catchup,
            max_bulk_action=settings.max_bulk_action,
            max_workflow_steps=settings.max_workflow_steps,
        )

    def as_json(self) -> dict[str, Any]:
        """The same fields, camelCase, for `GET /limits`."""
        return {to_camel_case(k): v for k, v in dataclasses.asdict(self).items()}


@strawberry.type(description="Two percentiles of a duration, in seconds (null: no task).")
class Percentiles:
    p50: float | None
    p95: float | None

    @classmethod
    def of(cls, p: stats.Percentiles) -> Percentiles:
        return cls(p50=p.p50, p95=p.p95)


@strawberry.type(description="How many tasks are in a status.")
class StatusCount:
    status: TaskStatus
    count: int


@strawberry.type(description="How many FAILED tasks have an error code.")
class ErrorCount:
    code: str
    count: int


@strawberry.type(description="The tasks that finished in one slice of the window.")
class StatsBucket:
    start: datetime
    succeeded: int
    failed: int
    cancelled: int
    queue_wait: Percentiles = strawberry.field(
        description="From created (or runAt) to the start of its last attempt."
    )
    run_time: Percentiles = strawberry.field(description="From that start to its end.")


@strawberry.type(
    description="An overview of your tasks (every owner's, for admins) since a time: "
    "counts, throughput, failures and timings."
)
class Stats:
    since: datetime
    bucket_seconds: int
    counts: list[StatusCount] = strawberry.field(
        description="The tasks created since `since`, by their status now (every status, "
        "0 included): the same numbers as `tasks(filter: {status, createdAfter})`."
    )
    buckets: list[StatsBucket] = strawberry.field(
        description="Consecutive slices of bucketSeconds from `since` to now, each with the "
        "tasks that finished in it."
    )
    queue_wait: Percentiles = strawberry.field(
        description="Over every task that finished since `since`."
    )
    run_time: Percentiles = strawberry.field(
        description="Over every task that finished since `since`."
    )
    failures_by_code: list[ErrorCount] = strawberry.field(
        description="The FAILED tasks created since `since`, by error code, most first."
    )

    @classmethod
    def of(cls, s: stats.Stats) -> Stats:
        return cls(
            since=s.since,
            bucket_seconds=s.bucket_seconds,
            counts=[StatusCount(status=k, count=v) for k, v in s.counts.items()],
            buckets=[
                StatsBucket(
                    start=b.start,
                    succeeded=b.succeeded,
                    failed=b.failed,
                    cancelled=b.cancelled,
                    queue_wait=Percentiles.of(b.queue_wait),
                    run_time=Percentiles.of(b.run_time),
                )
                for b in s.buckets
            ],
            queue_wait=Percentiles.of(s.queue_wait),
            run_time=Percentiles.of(s.run_time),
            failures_by_code=[ErrorCount(code=c, count=n) for c, n in s.failures_by_code],
        )
