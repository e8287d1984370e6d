"""Where a task is in its life (TaskStatus) and why it failed (TaskError), as GraphQL types."""

from __future__ import annotations

import strawberry

from taskrunner.states import TaskStatus

# Registers the domain's TaskStatus with strawberry, once, on import: each module whose
# GraphQL types name TaskStatus imports this one.
strawberry.enum(
    TaskStatus,
    description="Where a task is in its life: QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED.",
)


@strawberry.type(description="Why a task failed: a machine-readable code and a message.")
class TaskError:
    code: str
    message: str
