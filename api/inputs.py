"""Task inputs derived from the worker catalog: one GraphQL input per task type, joined in
the `@oneOf` `TaskSpecInput`, and their validation into `Submission`s (by
`taskrunner.options`, which also checks what a task body's `ctx.submit` is given).

The catalog is read when the schema is built (`build_task_inputs`), never at import."""

from __future__ import annotations

from dataclasses import replace
from functools import cache
from typing import Any

import strawberry
from strawberry.experimental.pydantic import input as pydantic_input

from api.types.tasks import TaskOptionsInput
from taskrunner.config import Settings
from taskrunner.errors import BadInput
from taskrunner.keys import Principal
from taskrunner.options import submission
from taskrunner.submissions import Submission
from workers.catalog import TaskType, catalog


def _graphql_input(task_type: TaskType) -> type:
    name = "".join(p[:1].upper() + p[1:] for p in task_type.name.split("_")) + "Input"
    shell = type(name, (), {"__doc__": task_type.description})
    return pydantic_input(
        model=task_type.input_model, name=name, all_fields=True, description=task_type.description
    )(shell)


class TaskSpecInput:
    """The `@oneOf` input naming the task to run: one field per task type of the catalog,
    given by `build_task_inputs` (the GraphQL type exists once that has run)."""


@cache
def build_task_inputs() -> dict[str, type]:
    """The GraphQL input of each task type in the catalog (read now), by name; makes
    `TaskSpecInput` the GraphQL input with one optional field per task type."""
    inputs = {name: _graphql_input(t) for name, t in catalog().items()}
    TaskSpecInput.__annotations__ = {name: t | None for name, t in inputs.items()}
    for name in inputs:
        setattr(TaskSpecInput, name, strawberry.UNSET)
    strawberry.input(
        TaskSpecInput,
        one_of=True,
        description="The task to run: exactly one field, named for its task type.",
    )
    return inputs


@strawberry.input(description="One task of a batch: what to run and how.")
class TaskSubmissionInput:
    task: TaskSpecInput
    options: TaskOptionsInput | None = None


def to_submission(
    spec: Any,
    options: TaskOptionsInput | None,
    settings: Settings,
    *,
    prefix: str = "",
    bound: frozenset[str] = frozenset(),
) -> Submission:
    """Validate one spec and its options against the catalog and the limits; errors name
    the field below `prefix` (e.g. "tasks[3]." in a batch). `bound`: input fields a
    workflow sets later from its parents' results (their errors now are not errors)."""
    try:
        return _submission(spec, options, settings, f"{prefix}task", bound)
    except BadInput as exc:
        if not prefix or exc.message.startswith(prefix):
            raise
        raise BadInput(f"{prefix}{exc.message}", field=f"{prefix}{exc.field or ''}") from None


def chosen_type(spec: Any, path: str) -> tuple[str, Any]:
    """The task type a TaskSpecInput names, and its input."""
    inputs = build_task_inputs()
    chosen = [(name, getattr(spec, name)) for name in inputs if getattr(spec, name)]
    if len(chosen) != 1:  # @oneOf makes this unreachable from GraphQL; kept for direct calls
        raise BadInput(f"{path}: give exactly one of {', '.join(inputs)}", field=path)
    return chosen[0]


def _submission(
    spec: Any,
    options: TaskOptionsInput | None,
    settings: Settings,
    path: str,
    bound: frozenset[str] = frozenset(),
) -> Submission:
    name, value = chosen_type(spec, path)
    return submission(catalog()[name], strawberry.asdict(value), options, settings, path, bound)


def as_callers(
    submissions: list[Submission],
    caller: Principal,
    settings: Settings,
    where: str = "",
    *,
    default_webhook: bool = True,
) -> list[Submission]:
    """The submissions as the caller's: its key, which signs their webhooks, and (with
    `default_webhook`: submitTask, submitTasks) the key's default webhook where the options
    gave none. A webhook nothing could sign is BAD_INPUT (`where`: the submission's path,
    with `{i}` for its index)."""
    found = []
    for i, given in enumerate(submissions):
        url = given.webhook_url
        if url is None and default_webhook:
            url = caller.webhook_url
        if url is not None and not caller.signs_webhooks and settings.webhook_secret is None:
            field = f"{where.format(i=i)}options.webhookUrl"
            raise BadInput(
                f"{field}: nothing can sign this task's webhook: "
                + (
                    f"the key {caller.name!r} has no webhook secret; make one with `taskrunner "
                    f"keys set-webhook {caller.name} --new-secret --url URL`"
                    if caller.key_id is not None
                    else "this server runs without API keys"
                )
                + ", or set WEBHOOK_SECRET",
                field=field,
            )
        found.append(replace(given, webhook_url=url, key_id=caller.key_id))
    return found
