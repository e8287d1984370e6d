"""Tables: `task` (one row per task, its current state) and `task_event` (its history).

Each task row carries `event_seq` (the seq of its last event) and `last_xid` (the
transaction that wrote it). Both are read under the row lock by the journal so
that per-task event order, seq order and transaction order are the same.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlmodel import Field, SQLModel

CURRENT_XID = sa.text("(pg_current_xact_id()::text::bigint)")
NOW = sa.text("clock_timestamp()")


class TaskTable(SQLModel, table=True):
    """The `task` table. Rows are read as plain `TaskRecord`s (below), never as ORM
    instances (building an instrumented instance per row is too slow for a page)."""

    __tablename__ = "task"
    __table_args__ = (
        sa.Index("ix_task_created", "created_at", "id"),
        # with owner and error_code: `stats` counts a window by status and error code from
        # the index alone
        sa.Index(
            "ix_task_status_created",
            "status",
            "created_at",
            postgresql_include=["owner", "error_code"],
        ),
        sa.Index("ix_task_type_created", "type", "created_at"),
        # with id and labels: a label filter is checked in the index, without fetching
        # each row it passes over (queries.list_tasks reads the page's ids from it first)
        sa.Index(
            "ix_task_owner_created_labels",
            "owner",
            "created_at",
            "id",
            postgresql_include=["labels"],
        ),
        # the scheduler's scan: tasks waiting in PostgreSQL until they are due
        sa.Index("ix_task_due", "due_at", postgresql_where=sa.text("due_at IS NOT NULL")),
        # queuePosition and the reconciler's look at ready tasks
        sa.Index(
            "ix_task_ready",
            sa.text("priority DESC"),
            "created_at",
            postgresql_where=sa.text("status = 'QUEUED' AND due_at IS NULL AND waiting IS NULL"),
        ),
        # `queues`: what waits and runs on each named queue
        sa.Index(
            "ix_task_queue_active",
            "queue",
            "status",
            "created_at",
            postgresql_where=sa.text("status IN ('QUEUED', 'RUNNING')"),
        ),
        # concurrency keys: the running tasks of a key, and those held back for a slot
        sa.Index(
            "ix_task_concurrency",
            "owner",
            "concurrency_key",
            "status",
            postgresql_where=sa.text(
                "concurrency_key IS NOT NULL AND status IN ('QUEUED', 'RUNNING')"
            ),
        ),
        # the deadline sweep: waiting tasks that must not start after a time
        sa.Index(
            "ix_task_deadline",
            "deadline",
            postgresql_where=sa.text("deadline IS NOT NULL AND status = 'QUEUED'"),
        ),
        # `stats`: what finished in a time window (the console's charts), read from the
        # index alone
        sa.Index(
            "ix_task_finished",
            "finished_at",
            postgresql_include=["owner", "status", "created_at", "started_at", "scheduled_for"],
            postgresql_where=sa.text("finished_at IS NOT NULL"),
        ),
        # Task.children
        sa.Index(
            "ix_task_parent",
            "parent_id",
            "created_at",
            postgresql_where=sa.text("parent_id IS NOT NULL"),
        ),
        # exactly one task per tick of a schedule; Schedule.tasks, newest tick first
        sa.Index(
            "ux_task_schedule_tick",
            "schedule_id",
            "scheduled_for",
            unique=True,
            postgresql_where=sa.text("schedule_id IS NOT NULL"),
        ),
        sa.Index("ix_task_running", "worker_id", postgresql_where=sa.text("status = 'RUNNING'")),
        # a workflow's steps
        sa.Index(
            "ix_task_workflow", "workflow_id", postgresql_where=sa.text("workflow_id IS NOT NULL")
        ),
        sa.Index("ix_task_labels", "labels", postgresql_using="gin"),
        # hooks a dead worker left to run, by the end of its lease (workers.hooks)
        sa.Index(
            "ix_task_hooks_due", "hooks_lease", postgresql_where=sa.text("hooks_due IS NOT NULL")
        ),
        sa.Index(
            "ux_task_owner_idempotency",
            "owner",
            "idempotency_key",
            unique=True,
            postgresql_where=sa.text("idempotency_key IS NOT NULL"),
        ),
    )

    id: uuid.UUID = Field(primary_key=True)
    owner: str = Field(default="", sa_column_kwargs={"server_default": ""})
    type: str
    status: str
    input: dict[str, Any] = Field(sa_column=sa.Column(JSONB, nullable=False))
    result: Any | None = Field(default=None, sa_column=sa.Column(JSONB))
    error_code: str | None = None
    error_message: str | None = None
    progress: float | None = None
    progress_message: str | None = None
    priority: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    attempts: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    max_retries: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    timeout_seconds: int
    idempotency_key: str | None = None
    labels: list[str] = Field(
        default_factory=list,
        sa_column=sa.Column(ARRAY(sa.Text), nullable=False, server_default="{}"),
    )
    created_at: datetime = Field(
        sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False, server_default=NOW)
    )
    scheduled_for: datetime | None = Field(
        default=None, sa_column=sa.Column(sa.DateTime(timezone=True))
    )
    started_at: datetime | None = Field(
        default=None, sa_column=sa.Column(sa.DateTime(timezone=True))
    )
    finished_at: datetime | None = Field(
        default=None, sa_column=sa.Column(sa.DateTime(timezone=True))
    )
    due_at: datetime | None = Field(
        default=None,
        sa_column=sa.Column(sa.DateTime(timezone=True)),
        description="QUEUED but waiting in PostgreSQL (runAt, retry backoff) until then; "
        "NULL once handed to the queue.",
    )
    cancel_requested: bool = Field(default=False, sa_column_kwargs={"server_default": "false"})
    worker_id: str | None = None
    trace_parent: str | None = None  # W3C traceparent of the submitting request
    queue: str = Field(
        default="default",
        sa_column=sa.Column(sa.Text, nullable=False, server_default="default"),
        description="The named queue it waits on; workers serve the queues they are given.",
    )
    concurrency_key: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    concurrency_limit: int | None = None
    waiting: str | None = Field(
        default=None,
        sa_column=sa.Column(sa.Text),
        description="QUEUED but held back from the queue: 'concurrency' while as many tasks "
        "of its concurrency key run as its limit allows; 'parents' while a workflow step "
        "waits for the steps it depends on.",
    )
    schedule_id: uuid.UUID | None = Field(
        default=None, sa_column=sa.Column(sa.Uuid), description="The schedule that fired it."
    )
    workflow_id: uuid.UUID | None = Field(
        default=None, sa_column=sa.Column(sa.Uuid), description="The workflow it is a step of."
    )
    step_key: str | None = Field(
        default=None, sa_column=sa.Column(sa.Text), description="Its key in that workflow."
    )
    deadline: datetime | None = Field(
        default=None,
        sa_column=sa.Column(sa.DateTime(timezone=True)),
        description="Never started after it: still QUEUED then, it ends FAILED with "
        "DEADLINE_EXCEEDED.",
    )
    parent_id: uuid.UUID | None = Field(
        default=None,
        sa_column=sa.Column(sa.Uuid),
        description="The task whose body submitted it (ctx.submit).",
    )
    detached: bool = Field(
        default=False,
        sa_column_kwargs={"server_default": "false"},
        description="A cancel of its parent leaves it be.",
    )
    rate_limit: str | None = Field(
        default=None,
        sa_column=sa.Column(sa.Text),
        description="The rate its starts are held to (its type's RATE_LIMIT or its "
        "options.rateLimit), across all workers.",
    )
    webhook_url: str | None = Field(
        default=None,
        sa_column=sa.Column(sa.Text),
        description="Where its final status is POSTed (taskrunner.webhooks; the trigger of "
        "migration 0018 queues each delivery with the final status).",
    )
    key_id: uuid.UUID | None = Field(
        default=None,
        sa_column=sa.Column(sa.Uuid),
        description="The API key that submitted it (a subtask: its parent's; a schedule's "
        "task: the schedule's); its webhook secret signs the deliveries.",
    )
    event_seq: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    last_xid: int = Field(
        sa_column=sa.Column(sa.BigInteger, nullable=False, server_default=CURRENT_XID)
    )
    # a task module's hooks due after an attempt's end (`on_retry:2`), and until when the
    # worker that recorded them has them to run (workers.hooks)
    hooks_due: list[str] | None = Field(default=None, sa_column=sa.Column(ARRAY(sa.Text)))
    hooks_lease: datetime | None = Field(
        default=None, sa_column=sa.Column(sa.DateTime(timezone=True))
    )


class TaskEventTable(SQLModel, table=True):
    """The `task_event` table: a task's history, one row per event (read as events.Event)."""

    __tablename__ = "task_event"
    __table_args__ = (
        sa.UniqueConstraint("task_id", "seq", name="ux_task_event_task_seq"),
        sa.Index("ix_task_event_xid_id", "xid", "id"),
        sa.Index("ix_task_event_owner_xid_id", "owner", "xid", "id"),
    )

    id: int | None = Field(
        default=None, sa_column=sa.Column(sa.BigInteger, sa.Identity(), primary_key=True)
    )
    task_id: uuid.UUID = Field(
        sa_column=sa.Column(sa.Uuid, sa.ForeignKey("task.id", ondelete="CASCADE"), nullable=False)
    )
    seq: int
    xid: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False, server_default=CURRENT_XID))
    owner: str
    kind: str
    at: datetime = Field(
        sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False, server_default=NOW)
    )
    data: dict[str, Any] = Field(sa_column=sa.Column(JSONB, nullable=False))


class Artifact(SQLModel, table=True):
    """A file a task produced (or a client attached): metadata here, bytes in the store."""

    __tablename__ = "artifact"
    __table_args__ = (
        sa.Index("ix_artifact_task_created", "task_id", "created_at"),
        # an owner's stored bytes (OWNER_MAX_ARTIFACT_MB), summed in the index alone
        sa.Index("ix_artifact_owner", "owner", postgresql_include=["size"]),
    )

    id: uuid.UUID = Field(primary_key=True)
    task_id: uuid.UUID = Field(
        sa_column=sa.Column(sa.Uuid, sa.ForeignKey("task.id", ondelete="CASCADE"), nullable=False)
    )
    owner: str
    name: str
    content_type: str
    size: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    sha256: str
    key: str  # where the store keeps the bytes
    is_log: bool = Field(default=False, sa_column_kwargs={"server_default": "false"})
    created_at: datetime = Field(
        sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False, server_default=NOW)
    )


class ArtifactUpload(SQLModel, table=True):
    """An upload granted by createArtifactUpload and not completed yet. It holds a place
    among its task's artifacts and reserves `max_bytes` of its owner's quota until it is
    completed or expires; then the workers delete it with whatever bytes reached `key`."""

    __tablename__ = "artifact_upload"
    __table_args__ = (
        sa.Index("ix_artifact_upload_expires", "expires_at"),
        sa.Index("ix_artifact_upload_owner", "owner"),
        sa.Index("ix_artifact_upload_task", "task_id"),
    )

    id: uuid.UUID = Field(primary_key=True)
    # no foreign key: the grant (and the sweep that deletes its bytes) outlives its task
    task_id: uuid.UUID
    owner: str
    name: str
    content_type: str
    key: str  # where the client's bytes go in the store
    max_bytes: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    created_at: datetime = Field(
        sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False, server_default=NOW)
    )
    expires_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))


artifact_table: sa.Table = Artifact.__table__  # type: ignore[attr-defined]
artifact_upload_table: sa.Table = ArtifactUpload.__table__  # type: ignore[attr-defined]
task_table: sa.Table = TaskTable.__table__  # type: ignore[attr-defined]


@dataclass(slots=True, kw_only=True)
class TaskRecord:
    """A `task` row as read: one attribute per column (tests check they match)."""

    id: uuid.UUID
    owner: str
    type: str
    status: str
    input: dict[str, Any]
    result: Any | None
    error_code: str | None
    error_message: str | None
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
    due_at: datetime | None
    cancel_requested: bool
    worker_id: str | None
    trace_parent: str | None
    queue: str
    concurrency_key: str | None
    concurrency_limit: int | None
    waiting: str | None
    schedule_id: uuid.UUID | None
    workflow_id: uuid.UUID | None
    step_key: str | None
    deadline: datetime | None
    parent_id: uuid.UUID | None
    detached: bool
    rate_limit: str | None
    webhook_url: str | None
    key_id: uuid.UUID | None
    event_seq: int
    last_xid: int
    hooks_due: list[str] | None = None
    hooks_lease: datetime | None = None


event_table: sa.Table = TaskEventTable.__table__  # type: ignore[attr-defined]


class ScheduleTable(SQLModel, table=True):
    """The `schedule` table: a task spec fired on a cron expression or a fixed interval
    (taskrunner.schedules). Each tick fires one task (task.schedule_id, task.scheduled_for:
    unique), however many workers look at it."""

    __tablename__ = "schedule"
    __table_args__ = (
        sa.Index("ix_schedule_owner_created", "owner", "created_at", "id"),
        sa.Index("ix_schedule_due", "next_run_at", postgresql_where=sa.text("NOT paused")),
    )

    id: uuid.UUID = Field(primary_key=True)
    owner: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    key_id: uuid.UUID | None = Field(
        default=None, sa_column=sa.Column(sa.Uuid), description="The API key that made it."
    )
    name: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    cron: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    every_seconds: float | None = Field(default=None, sa_column=sa.Column(sa.Float))
    timezone: str = Field(sa_column=sa.Column(sa.Text, nullable=False, server_default="UTC"))
    task_type: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    task_input: dict[str, Any] = Field(sa_column=sa.Column(JSONB, nullable=False))
    options: dict[str, Any] = Field(sa_column=sa.Column(JSONB, nullable=False))
    overlap: str = Field(sa_column=sa.Column(sa.Text, nullable=False, server_default="ALLOW"))
    catchup: str = Field(sa_column=sa.Column(sa.Text, nullable=False, server_default="ONE"))
    paused: bool = Field(default=False, sa_column_kwargs={"server_default": "false"})
    next_run_at: datetime | None = Field(
        default=None, sa_column=sa.Column(sa.DateTime(timezone=True))
    )
    last_run_at: datetime | None = Field(
        default=None, sa_column=sa.Column(sa.DateTime(timezone=True))
    )
    last_task_id: uuid.UUID | None = Field(default=None, sa_column=sa.Column(sa.Uuid))
    skipped: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    last_skipped_at: datetime | None = Field(
        default=None, sa_column=sa.Column(sa.DateTime(timezone=True))
    )
    created_at: datetime = Field(
        sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False, server_default=NOW)
    )
    # who made it, who changed it last (update, pause, resume) and when (taskrunner.actors)
    created_by: dict[str, str] | None = Field(default=None, sa_column=sa.Column(JSONB))
    changed_by: dict[str, str] | None = Field(default=None, sa_column=sa.Column(JSONB))
    changed_at: datetime | None = Field(
        default=None, sa_column=sa.Column(sa.DateTime(timezone=True))
    )


schedule_table: sa.Table = ScheduleTable.__table__  # type: ignore[attr-defined]


class WorkflowTable(SQLModel, table=True):
    """The `workflow` table: a DAG of step tasks (taskrunner.workflows). Its status is
    derived from its steps' and changed only under this row's lock."""

    __tablename__ = "workflow"
    __table_args__ = (
        sa.Index("ix_workflow_owner_created", "owner", "created_at", "id"),
        # the reconciler's look at unfinished workflows
        sa.Index(
            "ix_workflow_running", "created_at", postgresql_where=sa.text("status = 'RUNNING'")
        ),
        # retention: finished workflows, oldest first
        sa.Index(
            "ix_workflow_finished",
            "finished_at",
            postgresql_where=sa.text("finished_at IS NOT NULL"),
        ),
        sa.Index(
            "ux_workflow_owner_idempotency",
            "owner",
            "idempotency_key",
            unique=True,
            postgresql_where=sa.text("idempotency_key IS NOT NULL"),
        ),
    )

    id: uuid.UUID = Field(primary_key=True)
    owner: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    key_id: uuid.UUID | None = Field(default=None, sa_column=sa.Column(sa.Uuid))
    name: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    status: str = Field(sa_column=sa.Column(sa.Text, nullable=False, server_default="RUNNING"))
    on_step_failure: str = Field(
        sa_column=sa.Column(sa.Text, nullable=False, server_default="FAIL_WORKFLOW")
    )
    labels: list[str] = Field(
        default_factory=list,
        sa_column=sa.Column(ARRAY(sa.Text), nullable=False, server_default="{}"),
    )
    idempotency_key: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    step_count: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    cancel_requested: bool = Field(default=False, sa_column_kwargs={"server_default": "false"})
    schedule_id: uuid.UUID | None = Field(default=None, sa_column=sa.Column(sa.Uuid))
    scheduled_for: datetime | None = Field(
        default=None, sa_column=sa.Column(sa.DateTime(timezone=True))
    )
    created_at: datetime = Field(
        sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False, server_default=NOW)
    )
    finished_at: datetime | None = Field(
        default=None, sa_column=sa.Column(sa.DateTime(timezone=True))
    )


class WorkflowStep(SQLModel, table=True):
    """The `workflow_step` table: a step task's place in its workflow."""

    __tablename__ = "workflow_step"
    __table_args__ = (sa.UniqueConstraint("workflow_id", "key", name="ux_workflow_step_key"),)

    task_id: uuid.UUID = Field(
        sa_column=sa.Column(sa.Uuid, sa.ForeignKey("task.id", ondelete="CASCADE"), primary_key=True)
    )
    workflow_id: uuid.UUID = Field(
        sa_column=sa.Column(
            sa.Uuid, sa.ForeignKey("workflow.id", ondelete="CASCADE"), nullable=False
        )
    )
    key: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    position: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    depends_on: list[str] = Field(
        default_factory=list,
        sa_column=sa.Column(ARRAY(sa.Text), nullable=False, server_default="{}"),
    )
    bindings: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=sa.Column(JSONB, nullable=False, server_default="[]")
    )
    input: dict[str, Any] = Field(
        sa_column=sa.Column(JSONB, nullable=False), description="The input as submitted."
    )


workflow_table: sa.Table = WorkflowTable.__table__  # type: ignore[attr-defined]
workflow_step_table: sa.Table = WorkflowStep.__table__  # type: ignore[attr-defined]


class QueueState(SQLModel, table=True):
    """The `queue_state` table: named queues an admin paused (pauseQueue). A queue without
    a row is not paused."""

    __tablename__ = "queue_state"

    name: str = Field(sa_column=sa.Column(sa.Text, primary_key=True))
    paused: bool = Field(default=False, sa_column_kwargs={"server_default": "false"})
    changed_at: datetime = Field(
        sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False, server_default=NOW)
    )
    # the actor of its last pause or resume (taskrunner.actors)
    changed_by: dict[str, str] | None = Field(default=None, sa_column=sa.Column(JSONB))


queue_state_table: sa.Table = QueueState.__table__  # type: ignore[attr-defined]


class ApiKey(SQLModel, table=True):
    """A caller's credential: only the SHA-256 of the key is kept, never the key."""

    __tablename__ = "api_key"

    id: uuid.UUID = Field(primary_key=True)
    name: str = Field(sa_column=sa.Column(sa.String(100), nullable=False, unique=True))
    owner: str = Field(sa_column=sa.Column(sa.String(100), nullable=False))
    admin: bool = Field(default=False, sa_column_kwargs={"server_default": "false"})
    prefix: str  # the key's first characters, to recognise it in `keys list`
    hash: str = Field(sa_column=sa.Column(sa.String(64), nullable=False, unique=True))
    created_at: datetime = Field(
        sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False, server_default=NOW)
    )
    revoked_at: datetime | None = Field(
        default=None, sa_column=sa.Column(sa.DateTime(timezone=True), index=True)
    )
    webhook_url: str | None = Field(
        default=None,
        sa_column=sa.Column(sa.Text),
        description="Default webhook of the tasks it submits (submitTask, submitTasks).",
    )
    webhook_secret: str | None = Field(
        default=None,
        sa_column=sa.Column(sa.Text),
        description="The HMAC key that signs its tasks' webhooks: kept as is (signing needs "
        "it), shown once when made. None: a key made before webhooks; WEBHOOK_SECRET signs.",
    )


api_key_table: sa.Table = ApiKey.__table__  # type: ignore[attr-defined]


class WebhookDelivery(SQLModel, table=True):
    """The `webhook_delivery` table, the outbox of completion webhooks: one row per attempt
    to POST one final status of a task (`delivery_id` is shared by a delivery's attempts).
    The first attempt is inserted by a trigger in the transaction that writes the final
    status (migration 0018); taskrunner.webhooks claims due rows under a lease, records
    the outcome and inserts the next attempt."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        sa.Index("ix_webhook_delivery_task", "task_id", "delivery_id", "attempt"),
        sa.Index(
            "ix_webhook_delivery_due", "due_at", postgresql_where=sa.text("status = 'PENDING'")
        ),
    )

    id: int | None = Field(
        default=None, sa_column=sa.Column(sa.BigInteger, sa.Identity(), primary_key=True)
    )
    delivery_id: uuid.UUID = Field(sa_column=sa.Column(sa.Uuid, nullable=False))
    task_id: uuid.UUID = Field(
        sa_column=sa.Column(sa.Uuid, sa.ForeignKey("task.id", ondelete="CASCADE"), nullable=False)
    )
    attempt: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    status: str = Field(
        sa_column=sa.Column(sa.Text, nullable=False),
        description="PENDING (due at due_at), DELIVERED (a 2xx answer) or FAILED.",
    )
    url: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    task: dict[str, Any] = Field(
        sa_column=sa.Column(JSONB, nullable=False),
        description="The body's `task`, as the final status was written.",
    )
    due_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))
    lease_until: datetime | None = Field(
        default=None,
        sa_column=sa.Column(sa.DateTime(timezone=True)),
        description="Claimed by a worker until then (a crashed worker's claim runs out).",
    )
    lease_token: uuid.UUID | None = Field(default=None, sa_column=sa.Column(sa.Uuid))
    started_at: datetime | None = Field(
        default=None, sa_column=sa.Column(sa.DateTime(timezone=True))
    )
    finished_at: datetime | None = Field(
        default=None, sa_column=sa.Column(sa.DateTime(timezone=True))
    )
    duration_ms: float | None = Field(default=None, sa_column=sa.Column(sa.Float))
    status_code: int | None = Field(default=None, sa_column=sa.Column(sa.Integer))
    error: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    created_at: datetime = Field(
        sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False, server_default=NOW)
    )


webhook_delivery_table: sa.Table = WebhookDelivery.__table__  # type: ignore[attr-defined]
