"""Validation of a WorkflowInput into a `workflows.WorkflowSpec`: every step's task as
submitTask checks it (bound fields excepted), its bindings against its task type's input,
and the graph whole (taskrunner.dag.check_graph). All or none: nothing is written before
every check passed."""

from __future__ import annotations

import re
from functools import cache
from typing import Any, get_args, get_origin

from pydantic.fields import FieldInfo

from api.inputs import chosen_type, to_submission
from api.types.tasks import TaskOptionsInput
from api.types.workflows import WorkflowInput, WorkflowStepInput
from taskrunner.config import Settings
from taskrunner.dag import Binding, Node, StepFailurePolicy, check_graph
from taskrunner.errors import BadInput
from taskrunner.options import camel as _camel
from taskrunner.options import idempotency_key as _idempotency_key
from taskrunner.options import labels as _labels
from taskrunner.workflows import StepSpec, WorkflowSpec
from workers.catalog import catalog

STEP_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
MAX_WORKFLOW_NAME = 200


def to_workflow_spec(
    given: WorkflowInput, settings: Settings, where: str = "workflow"
) -> WorkflowSpec:
    """Check the whole workflow; BAD_INPUT names the step and field at fault (below
    `where`: `workflow`, or `workflows[3]` in a batch)."""
    prefix = f"{where}.steps"
    name = given.name.strip() if given.name is not None else None
    if name is not None and not 1 <= len(name) <= MAX_WORKFLOW_NAME:
        raise BadInput(
            f"{where}.name: give 1 to {MAX_WORKFLOW_NAME} characters", field=f"{where}.name"
        )
    nodes = [
        Node(s.key, tuple(s.depends_on), tuple(_binding(s, i, j) for j in range(len(s.bind))))
        for i, s in enumerate(given.steps)
    ]
    # keys and shape first (a huge or cyclic graph costs no input validation)
    for i, step in enumerate(given.steps):
        if not STEP_KEY.match(step.key):
            raise BadInput(
                f"{prefix}[{i}].key: {step.key!r} is not a step key; use 1 to 100 letters, "
                "digits, '_', '.', ':' or '-'",
                field=f"{prefix}[{i}].key",
            )
    check_graph(nodes, most=settings.max_workflow_steps, prefix=prefix)
    steps = tuple(
        _step(step, node, f"{prefix}[{i}].", settings)
        for i, (step, node) in enumerate(zip(given.steps, nodes, strict=True))
    )
    opts = TaskOptionsInput(labels=given.labels, idempotency_key=given.idempotency_key)
    return WorkflowSpec(
        steps=steps,
        name=name,
        on_step_failure=StepFailurePolicy(given.on_step_failure.value),
        labels=_labels(opts, settings),
        idempotency_key=_idempotency_key(opts, settings),
    )


def _binding(step: WorkflowStepInput, i: int, j: int) -> Binding:
    """A binding as given, its field in the GraphQL spelling (checked by `_step`)."""
    b = step.bind[j]
    field, append = (b.field[:-2], True) if b.field.endswith("[]") else (b.field, False)
    return Binding(field, b.step, b.path or None, append)


def _is_list(annotation: Any) -> bool:
    """A list, or an optional list."""
    return get_origin(annotation) is list or any(
        get_origin(a) is list for a in get_args(annotation)
    )


@cache
def _fields(type_name: str) -> tuple[dict[str, FieldInfo], dict[str, str]]:
    """A task type's input fields, and their Python names by GraphQL and Python name."""
    fields = catalog()[type_name].input_model.model_fields
    return fields, {_camel(f): f for f in fields} | {f: f for f in fields}


def _step(step: WorkflowStepInput, node: Node, where: str, settings: Settings) -> StepSpec:
    type_name, _ = chosen_type(step.task, f"{where}task")
    fields, by_name = _fields(type_name)
    bindings = []
    for j, b in enumerate(node.bindings):
        if b.field not in by_name:
            raise BadInput(
                f"{where}bind[{j}].field: {b.field!r} is not an input field of {type_name} "
                f"(its fields: {', '.join(_camel(f) for f in fields)})",
                field=f"{where}bind[{j}].field",
            )
        if b.path is not None and not all(b.path.split(".")):
            raise BadInput(
                f"{where}bind[{j}].path: {b.path!r} has an empty part; write keys and list "
                "indexes separated by single dots, e.g. items.0.url",
                field=f"{where}bind[{j}].path",
            )
        field = fields[by_name[b.field]]
        if b.append and not _is_list(field.annotation):
            raise BadInput(
                f"{where}bind[{j}].field: {b.field}[] appends to a list, and {b.field!r} of "
                f"{type_name} is not one; bind it without [] to set it",
                field=f"{where}bind[{j}].field",
            )
        bindings.append(Binding(by_name[b.field], b.step, b.path, b.append))
    opts = step.options or TaskOptionsInput()
    for option, value in (
        ("runAt", opts.run_at),
        ("delaySeconds", opts.delay_seconds),
        ("idempotencyKey", opts.idempotency_key),
    ):
        if value is not None:
            hint = (
                "give the workflow an idempotencyKey"
                if option == "idempotencyKey"
                else "a step starts when its parents have SUCCEEDED"
            )
            raise BadInput(
                f"{where}options.{option}: not for a workflow step; {hint}",
                field=f"{where}options.{option}",
            )
    submission = to_submission(
        step.task,
        step.options,
        settings,
        prefix=where,
        bound=frozenset(b.field for b in bindings),
    )
    return StepSpec(node.key, submission, node.depends_on, tuple(bindings))
