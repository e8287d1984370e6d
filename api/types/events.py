"""The GraphQL types of a task's events: the TaskEvent interface, its kinds, and event_type."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import strawberry
from strawberry.scalars import JSON

from api.types.actors import Actor
from api.types.artifacts import Artifact
from api.types.status import TaskError
from taskrunner import actors
from taskrunner.events import Event, EventKind, encode_cursor
from taskrunner.states import TaskStatus


@strawberry.interface(description="Something that happened to a task, in order.")
class TaskEvent:
    cursor: str = strawberry.field(
        description="Pass as `after` to resume after this event (ordered per task)."
    )
    task_id: strawberry.ID
    at: datetime
    actor: Actor | None = strawberry.field(
        description="Who did it: the API key that asked (submit, cancel, retry, a workflow's "
        "or schedule's change), or the part of the service (SYSTEM); null for what the "
        "task's own code reported (progress, logs, artifacts)."
    )


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


@strawberry.type(description="The task stored an artifact.")
class ArtifactAdded(TaskEvent):
    artifact: Artifact


@strawberry.type(
    description="A schedule skipped its tick `scheduledFor` because this task, its last run, "
    "is unfinished (overlap: SKIP)."
)
class TickSkipped(TaskEvent):
    schedule_id: strawberry.ID
    scheduled_for: datetime


@strawberry.enum(description="A workflow's status, derived from its steps'.")
class WorkflowStatus(StrEnum):
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


@strawberry.type(
    description="Every step this workflow step depends on SUCCEEDED: its bindings are "
    "applied and it is in the queue."
)
class StepReady(TaskEvent):
    workflow_id: strawberry.ID
    step_key: str


@strawberry.type(
    description="The workflow moved to `status` (noted on the step whose change did it): "
    "it ended, or retryWorkflow runs it again."
)
class WorkflowStatusChanged(TaskEvent):
    workflow_id: strawberry.ID
    workflow_status: WorkflowStatus = strawberry.field(
        description="(Not `status`: a selection may hold StatusChanged's beside it.)"
    )


def event_type(event: Event) -> TaskEvent:
    """The GraphQL object for one stored event."""
    common: dict[str, Any] = {
        "cursor": encode_cursor(event.id),
        "task_id": strawberry.ID(str(event.task_id)),
        "at": event.at,
        "actor": Actor.of(actors.of_event(event.kind, event.data)),
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
    if event.kind is EventKind.SCHEDULE:
        return TickSkipped(
            **common,
            schedule_id=strawberry.ID(data["schedule_id"]),
            scheduled_for=datetime.fromisoformat(data["scheduled_for"]),
        )
    if event.kind is EventKind.STEP_READY:
        return StepReady(
            **common, workflow_id=strawberry.ID(data["workflow_id"]), step_key=data["step_key"]
        )
    if event.kind is EventKind.WORKFLOW:
        return WorkflowStatusChanged(
            **common,
            workflow_id=strawberry.ID(data["workflow_id"]),
            workflow_status=WorkflowStatus(data["status"]),
        )
    if event.kind is EventKind.PROGRESS:
        return ProgressReported(**common, progress=data["progress"], message=data.get("message"))
    return LogAppended(**common, level=data["level"], line=data["line"])
