"""What the client reads, as pydantic models.

The models are the selection: `operations.py` asks for exactly the fields declared here
(camelCase aliases of the snake_case attributes) and checks every one against
schema.graphql, its type and its nullability included, before any request is sent.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, JsonValue, Tag
from pydantic.alias_generators import to_camel


class Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)


class TaskStatus(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def finished(self) -> bool:
        return self in (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED)


class WorkflowStatus(StrEnum):
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def finished(self) -> bool:
        return self is not WorkflowStatus.RUNNING


class TaskError(Model):
    code: str
    message: str


class Artifact(Model):
    id: str
    name: str
    content_type: str
    size: int
    url: str


class Task(Model):
    id: str
    type: str
    status: TaskStatus
    attempts: int
    labels: list[str]
    created_at: datetime
    progress: float | None = None
    result: JsonValue = None
    error: TaskError | None = None


class TaskEventBase(Model):
    """The fields of the `TaskEvent` interface, which every event has."""

    cursor: str  # pass as `after` to resume after this event
    task_id: str
    at: datetime


class StatusChanged(TaskEventBase):
    typename: Literal["StatusChanged"] = Field(alias="__typename")
    status: TaskStatus
    error: TaskError | None = None
    result: JsonValue = None


class ProgressReported(TaskEventBase):
    typename: Literal["ProgressReported"] = Field(alias="__typename")
    progress: float
    message: str | None = None


class LogAppended(TaskEventBase):
    typename: Literal["LogAppended"] = Field(alias="__typename")
    level: str
    line: str


class ArtifactAdded(TaskEventBase):
    typename: Literal["ArtifactAdded"] = Field(alias="__typename")
    artifact: Artifact


class TickSkipped(TaskEventBase):
    """A schedule skipped a tick because this task, its last run, is unfinished."""

    typename: Literal["TickSkipped"] = Field(alias="__typename")
    schedule_id: str
    scheduled_for: datetime


class StepReady(TaskEventBase):
    """Every step this workflow step depends on SUCCEEDED: its input is bound, it is queued."""

    typename: Literal["StepReady"] = Field(alias="__typename")
    workflow_id: str
    step_key: str


class WorkflowStatusChanged(TaskEventBase):
    """The workflow moved to `workflow_status` (noted on the step whose change did it)."""

    typename: Literal["WorkflowStatusChanged"] = Field(alias="__typename")
    workflow_id: str
    workflow_status: WorkflowStatus


class OtherEvent(TaskEventBase):
    """An event of a kind this client does not know yet (the server added one)."""

    typename: str = Field(alias="__typename")


EVENT_MODELS: tuple[type[TaskEventBase], ...] = (
    StatusChanged,
    ProgressReported,
    LogAppended,
    ArtifactAdded,
    TickSkipped,
    StepReady,
    WorkflowStatusChanged,
)
_KNOWN = {model.__name__ for model in EVENT_MODELS}


def _event_kind(value: Any) -> str:
    typename = value.get("__typename") if isinstance(value, dict) else value.typename
    return typename if typename in _KNOWN else "other"


TaskEvent = Annotated[
    Annotated[StatusChanged, Tag("StatusChanged")]
    | Annotated[ProgressReported, Tag("ProgressReported")]
    | Annotated[LogAppended, Tag("LogAppended")]
    | Annotated[ArtifactAdded, Tag("ArtifactAdded")]
    | Annotated[TickSkipped, Tag("TickSkipped")]
    | Annotated[StepReady, Tag("StepReady")]
    | Annotated[WorkflowStatusChanged, Tag("WorkflowStatusChanged")]
    | Annotated[OtherEvent, Tag("other")],
    Discriminator(_event_kind),
]


class WorkflowStep(Model):
    key: str
    depends_on: list[str]
    task: Task


class Workflow(Model):
    id: str
    name: str | None = None
    status: WorkflowStatus
    step_count: int
    created_at: datetime
    finished_at: datetime | None = None
    steps: list[WorkflowStep]
