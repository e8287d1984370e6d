"""A typed client of the taskrunner GraphQL API, checked against schema.graphql."""

from .client import TaskrunnerClient, TaskrunnerError
from .models import (
    Artifact,
    ArtifactAdded,
    LogAppended,
    OtherEvent,
    ProgressReported,
    StatusChanged,
    Task,
    TaskError,
    TaskEvent,
    TaskStatus,
    TickSkipped,
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
    "Task",
    "TaskError",
    "TaskEvent",
    "TaskStatus",
    "TaskrunnerClient",
    "TaskrunnerError",
    "TickSkipped",
    "check_models",
    "load_schema",
]
