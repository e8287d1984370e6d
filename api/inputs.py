"""Task inputs derived from the worker catalog: one GraphQL input per task type, joined in
the `@oneOf` `TaskSpecInput`, and their validation into `Submission`s.

The catalog is read when the schema is built (`build_task_inputs`), never at import."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any

import orjson
import strawberry
from pydantic import ValidationError
from strawberry.experimental.pydantic import input as pydantic_input

from api.types.tasks import TaskOptionsInput
from taskrunner import jsonx
from taskrunner.config import QUEUE_NAME, QUEUE_NAME_RULE, Settings
from taskrunner.errors import BadInput, LimitExceeded
from taskrunner.queue import PRIORITY_MAX, PRIORITY_MIN
from taskrunner.submissions import Submission
from workers.catalog import TaskType, catalog


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


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


def _pydantic_errors(errors: Any, prefix: str) -> BadInput:
    parts: list[str] = []
    first_field = prefix
    for err in errors:
        where = ".".join([prefix, *(_camel(str(p)) for p in err["loc"])])
        first_field = first_field if parts else where
        parts.append(f"{where}: {err['msg']}")
    return BadInput("; ".join(parts), field=first_field)


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
    task_type = catalog()[name]
    raw = strawberry.asdict(value)
    size = len(jsonx.dumps(raw))
    if size > settings.max_task_input_bytes:
        raise LimitExceeded(
            f"{path}.{name}: the input is {size} bytes as JSON, over MAX_TASK_INPUT_BYTES "
            f"({settings.max_task_input_bytes}); pass large data as an artifact or a URL",
            field=f"{path}.{name}",
        )
    model: Any = None
    try:
        model = task_type.input_model.model_validate(
            raw,
            context={
                "max_runtime_seconds": settings.task_max_runtime_seconds,
                "settings": settings,
            },
        )
    except ValidationError as exc:
        errors = [e for e in exc.errors() if not e["loc"] or e["loc"][0] not in bound]
        if errors:
            raise _pydantic_errors(errors, f"{path}.{name}") from None
    opts = options or TaskOptionsInput()
    key, limit = _concurrency(opts, task_type, model)
    return Submission(
        type=name,
        # with fields still to bind, as given: the input is checked once bound, when the
        # step becomes ready (taskrunner.dag, workers.catalog.input_check)
        input=model.model_dump(mode="json")
        if model is not None
        else orjson.loads(jsonx.dumps(raw)),
        priority=_ranged("priority", opts.priority, 0, PRIORITY_MIN, PRIORITY_MAX),
        max_retries=_ranged(
            "maxRetries",
            opts.max_retries,
            task_type.retry.max_retries,
            0,
            settings.task_max_retries,
            high_name="TASK_MAX_RETRIES",
        ),
        timeout_seconds=_timeout(opts, settings),
        scheduled_for=_run_at(opts),
        delay_seconds=_delay(opts),
        idempotency_key=_idempotency_key(opts, settings),
        labels=_labels(opts, settings),
        queue=_queue(opts, task_type),
        concurrency_key=key,
        concurrency_limit=limit,
    )


MAX_CONCURRENCY_KEY_LENGTH = 200


def _queue(opts: TaskOptionsInput, task_type: TaskType) -> str:
    if opts.queue is None:
        return task_type.queue
    if not QUEUE_NAME.match(opts.queue):
        raise BadInput(
            f"options.queue: {opts.queue!r} is not a queue name; use {QUEUE_NAME_RULE}",
            field="options.queue",
        )
    return opts.queue


def _concurrency(
    opts: TaskOptionsInput, task_type: TaskType, model: Any
) -> tuple[str | None, int | None]:
    """The concurrency key and limit: the options', else the task type's default."""
    key, limit = opts.concurrency_key, opts.concurrency_limit
    if limit is not None and limit < 1:
        raise BadInput(
            f"options.concurrencyLimit: must be 1 or more, got {limit}",
            field="options.concurrencyLimit",
        )
    if key is None:
        if limit is not None:
            raise BadInput(
                "options.concurrencyLimit: give concurrencyKey too (the tasks the limit counts "
                "are those with the same key)",
                field="options.concurrencyLimit",
            )
        default = task_type.concurrency(model) if task_type.concurrency and model else None
        return default if default is not None else (None, None)
    if not 1 <= len(key) <= MAX_CONCURRENCY_KEY_LENGTH:
        raise BadInput(
            f"options.concurrencyKey: must be 1 to {MAX_CONCURRENCY_KEY_LENGTH} characters",
            field="options.concurrencyKey",
        )
    return key, limit or 1


def _labels(opts: TaskOptionsInput, settings: Settings) -> tuple[str, ...]:
    labels = tuple(dict.fromkeys(opts.labels or ()))
    most, longest = settings.max_labels_per_task, settings.max_label_length
    if len(labels) > most or any(not 1 <= len(x) <= longest for x in labels):
        raise BadInput(
            f"labels: give at most MAX_LABELS_PER_TASK ({most}) labels of 1 to "
            f"MAX_LABEL_LENGTH ({longest}) characters",
            field="labels",
        )
    return labels


def _ranged(
    name: str, value: int | None, default: int, low: int, high: int, *, high_name: str = ""
) -> int:
    """`value` (None: `default`) within [low, high]; `high_name`: the setting `high` is."""
    if value is None:
        return default
    if not low <= value <= high:
        bound = f"{high_name} ({high})" if high_name else str(high)
        raise BadInput(
            f"options.{name}: must be between {low} and {bound}, got {value}",
            field=f"options.{name}",
        )
    return value


def _timeout(opts: TaskOptionsInput, settings: Settings) -> int:
    limit = settings.task_max_runtime_seconds
    if opts.timeout_seconds is None:
        return min(settings.task_default_timeout_seconds, limit)
    if not 1 <= opts.timeout_seconds <= limit:
        raise BadInput(
            f"options.timeoutSeconds: must be between 1 and TASK_MAX_RUNTIME_SECONDS ({limit}), "
            f"got {opts.timeout_seconds}",
            field="options.timeoutSeconds",
        )
    return opts.timeout_seconds


def _run_at(opts: TaskOptionsInput) -> datetime | None:
    if opts.run_at is not None and opts.delay_seconds is not None:
        raise BadInput(
            "options: give runAt or delaySeconds, not both", field="options.delaySeconds"
        )
    if opts.run_at is not None and opts.run_at.tzinfo is None:
        raise BadInput(
            "options.runAt: give a time zone, e.g. 2030-01-01T12:00:00Z", field="options.runAt"
        )
    return opts.run_at


def _delay(opts: TaskOptionsInput) -> int | None:
    if opts.delay_seconds is not None and opts.delay_seconds < 0:
        raise BadInput(
            f"options.delaySeconds: must be >= 0, got {opts.delay_seconds}",
            field="options.delaySeconds",
        )
    return opts.delay_seconds


def _idempotency_key(opts: TaskOptionsInput, settings: Settings) -> str | None:
    key, longest = opts.idempotency_key, settings.max_idempotency_key_length
    if key is not None and not 1 <= len(key) <= longest:
        raise BadInput(
            f"options.idempotencyKey: must be 1 to MAX_IDEMPOTENCY_KEY_LENGTH ({longest}) "
            "characters",
            field="options.idempotencyKey",
        )
    return key
