"""A typed client of the taskrunner GraphQL API, checked against schema.graphql."""

from .client import TaskrunnerClient, TaskrunnerError
from .models import (
    Artifact,
    ArtifactAdded,
    LogAppended,
    OtherEvent,
    ProgressReported,
    StatusChanged,
    StepReady,
    Task,
    TaskError,
    TaskEvent,
    TaskStatus,
    TickSkipped,
    Workflow,
    WorkflowStatus,
    WorkflowStatusChanged,
    WorkflowStep,
)
from .operations import Operations, SchemaMismatch, check_models, load_schema

__all__ = [
    "Artifact",
    "ArtifactAdded",
    "LogAppended",
    "Operations",
    "OtherEvent",
    "ProgressReported",
    "SchemaMismatch",
    "StatusChanged",
    "StepReady",
    "Task",
    "TaskError",
    "TaskEvent",
    "TaskStatus",
    "TaskrunnerClient",
    "TaskrunnerError",
    "TickSkipped",
    "Workflow",
    "WorkflowStatus",
    "WorkflowStatusChanged",
    "WorkflowStep",
    "check_models",
    "load_schema",
]
