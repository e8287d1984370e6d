"""The GraphQL types of workflows: their input (steps, dependencies, bindings) and
Workflow, its steps and pages."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

import strawberry

from api.context import Info
from api.inputs import TaskSpecInput
from api.types.events import WorkflowStatus
from api.types.tasks import PageInfo, Task, TaskOptionsInput
from taskrunner import workflows
from taskrunner.workflows import WorkflowRecord


@strawberry.enum(
    description="What a step that ends FAILED (after its retries) or CANCELLED does. "
    "FAIL_WORKFLOW: every step that has not started is CANCELLED (WORKFLOW_FAILED) and the "
    "workflow ends FAILED. CONTINUE: the other branches go on; the step's dependents end "
    "CANCELLED with DEPENDENCY_FAILED."
)
class StepFailurePolicy(StrEnum):
    FAIL_WORKFLOW = "FAIL_WORKFLOW"
    CONTINUE = "CONTINUE"


@strawberry.input(
    description="Set the step's input field `field` from the result of the step `step` (one "
    'it depends on), or from `path` into that result. `field: "numbers[]"` appends the value '
    "to the list the input gives (e.g. `numbers: []`) instead of setting the field."
)
class StepBindingInput:
    field: str = strawberry.field(
        description="An input field of the step's task type; with `[]` after it, append."
    )
    step: str = strawberry.field(description="The key of a step in dependsOn.")
    path: str | None = strawberry.field(
        default=None,
        description="Dotted path into that step's result (`sum`, `items.0.url`); omitted: "
        "the whole result.",
    )


@strawberry.input(description="One step: a task, and the steps it waits for.")
class WorkflowStepInput:
    key: str = strawberry.field(description="Unique in the workflow; names the step.")
    task: TaskSpecInput
    options: TaskOptionsInput | None = None
    depends_on: list[str] = strawberry.field(
        default_factory=list,
        description="Keys of the steps that must SUCCEED before this one starts.",
    )
    bind: list[StepBindingInput] = strawberry.field(
        default_factory=list,
        description="Input fields set from those steps' results when this step is ready.",
    )


@strawberry.input(description="A DAG of steps, submitted all or none.")
class WorkflowInput:
    name: str | None = None
    steps: list[WorkflowStepInput] = strawberry.field(
        description="At most MAX_WORKFLOW_STEPS (see `limits`)."
    )
    on_step_failure: StepFailurePolicy = StepFailurePolicy.FAIL_WORKFLOW
    labels: list[str] | None = strawberry.field(
        default=None, description="Filter `workflows` by them (the steps' own are in options)."
    )
    idempotency_key: str | None = strawberry.field(
        default=None,
        description="Submitting again with the same key returns the first workflow.",
    )


@strawberry.type(description="A step of a workflow: its key, what it waits for, its task.")
class WorkflowStep:
    key: str
    depends_on: list[str]
    task: Task


@strawberry.type(
    description="A DAG of tasks: a step starts when every step it depends on SUCCEEDED."
)
class Workflow:
    id: strawberry.ID
    name: str | None
    status: WorkflowStatus = strawberry.field(
        description="RUNNING until every step has ended; then SUCCEEDED, FAILED (a step "
        "FAILED) or CANCELLED."
    )
    on_step_failure: StepFailurePolicy
    labels: list[str]
    idempotency_key: str | None
    step_count: int
    created_at: datetime
    finished_at: datetime | None

    @strawberry.field(description="Its steps, in the order they were submitted.")
    async def steps(self, info: Info) -> list[WorkflowStep]:
        workflow_id = uuid.UUID(str(self.id))
        found = await workflows.steps(
            engine=info.context.services.engine, workflow_ids=[workflow_id]
        )
        return [
            WorkflowStep(key=s.key, depends_on=s.depends_on, task=Task.from_row(s.task))
            for s in found[workflow_id]
        ]

    @classmethod
    def from_record(cls, w: WorkflowRecord) -> Workflow:
        return cls(
            id=strawberry.ID(str(w.id)),
            name=w.name,
            status=WorkflowStatus(w.status),
            on_step_failure=StepFailurePolicy(w.on_step_failure),
            labels=list(w.labels),
            idempotency_key=w.idempotency_key,
            step_count=w.step_count,
            created_at=w.created_at,
            finished_at=w.finished_at,
        )


@strawberry.type
class WorkflowEdge:
    cursor: str
    node: Workflow


@strawberry.type
class WorkflowConnection:
    edges: list[WorkflowEdge]
    page_info: PageInfo
