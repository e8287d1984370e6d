"""A task's options checked into a `Submission`: the one place that validates what
submitTask's `options` and a task body's `ctx.submit(spec, options)` say, so that both
refuse the same things with the same BAD_INPUT messages (naming the field and the fix).

The task type comes in as any object with the catalog's TaskType attributes (the domain
does not import `workers`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Protocol

import httpx
import orjson
from pydantic import BaseModel, ValidationError

from taskrunner import jsonx
from taskrunner.config import QUEUE_NAME, QUEUE_NAME_RULE, Settings
from taskrunner.errors import BadInput, LimitExceeded
from taskrunner.fetch import FetchRefused, check_host
from taskrunner.queue import PRIORITY_MAX, PRIORITY_MIN
from taskrunner.rates import RATE_RULE, Rate, parse_rate
from taskrunner.retries import RetryPolicy
from taskrunner.submissions import Submission

MAX_CONCURRENCY_KEY_LENGTH = 200
MAX_WEBHOOK_URL_LENGTH = 2000


class TaskTypeLike(Protocol):
    """What a submission needs of a task type (workers.catalog.TaskType)."""

    @property
    def name(self) -> str: ...
    @property
    def input_model(self) -> type[BaseModel]: ...
    @property
    def retry(self) -> RetryPolicy: ...
    @property
    def queue(self) -> str: ...
    @property
    def concurrency(self) -> Callable[[Any], tuple[str, int] | None] | None: ...
    @property
    def rate_limit(self) -> Rate | None: ...


@dataclass
class TaskOptions:
    """The options of a task (GraphQL's TaskOptionsInput has the same attributes)."""

    priority: int | None = None
    max_retries: int | None = None
    timeout_seconds: int | None = None
    run_at: datetime | None = None
    delay_seconds: int | None = None
    idempotency_key: str | None = None
    labels: list[str] | None = None
    queue: str | None = None
    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    deadline: datetime | None = None
    rate_limit: str | None = None
    webhook_url: str | None = None


def camel(name: str) -> str:
    """A snake_case name as GraphQL spells it."""
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


OPTION_NAMES = {camel(f.name): f.name for f in fields(TaskOptions)}


def options_from(given: Mapping[str, Any] | TaskOptions | None) -> TaskOptions:
    """TaskOptions from a mapping of GraphQL (camelCase) or Python (snake_case) names, as
    `ctx.submit` takes them; an unknown name is BAD_INPUT listing the known ones."""
    if given is None:
        return TaskOptions()
    if isinstance(given, TaskOptions):
        return given
    values: dict[str, Any] = {}
    for name, value in given.items():
        attribute = OPTION_NAMES.get(name, name if name in OPTION_NAMES.values() else None)
        if attribute is None:
            raise BadInput(
                f"options.{name}: not an option; use {', '.join(sorted(OPTION_NAMES))}",
                field=f"options.{name}",
            )
        values[attribute] = value
    return TaskOptions(**values)


def pydantic_errors(errors: Any, prefix: str) -> BadInput:
    """BAD_INPUT for a model's validation errors, each named by its field below `prefix`."""
    parts: list[str] = []
    first_field = prefix
    for err in errors:
        where = ".".join([prefix, *(camel(str(p)) for p in err["loc"])])
        first_field = first_field if parts else where
        parts.append(f"{where}: {err['msg']}")
    return BadInput("; ".join(parts), field=first_field)


def submission(
    task_type: TaskTypeLike,
    raw: Any,
    opts: Any,
    settings: Settings,
    path: str,
    bound: frozenset[str] = frozenset(),
) -> Submission:
    """The submission of `raw` input for `task_type` with `opts` (TaskOptions or GraphQL's
    TaskOptionsInput): the input checked by the type's model (its errors named below
    `path`, e.g. "task.echo"; `bound`: fields a workflow sets later from its parents'
    results, whose errors now are not errors), and every option by its rule."""
    name = task_type.name
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
            raise pydantic_errors(errors, f"{path}.{name}") from None
    opts = opts if opts is not None else TaskOptions()
    key, limit = _concurrency(opts, task_type, model)
    run_at = _run_at(opts)
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
        scheduled_for=run_at,
        delay_seconds=_delay(opts),
        idempotency_key=idempotency_key(opts, settings),
        labels=labels(opts, settings),
        queue=_queue(opts, task_type),
        concurrency_key=key,
        concurrency_limit=limit,
        deadline=_deadline(opts, run_at),
        rate_limit=_rate_limit(opts, task_type),
        webhook_url=webhook_url(opts.webhook_url, settings),
    )


def _queue(opts: Any, task_type: TaskTypeLike) -> str:
    if opts.queue is None:
        return task_type.queue
    if not QUEUE_NAME.match(opts.queue):
        raise BadInput(
            f"options.queue: {opts.queue!r} is not a queue name; use {QUEUE_NAME_RULE}",
            field="options.queue",
        )
    return str(opts.queue)


def _concurrency(opts: Any, task_type: TaskTypeLike, model: Any) -> tuple[str | None, int | None]:
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


def labels(opts: Any, settings: Settings) -> tuple[str, ...]:
    found = tuple(dict.fromkeys(opts.labels or ()))
    most, longest = settings.max_labels_per_task, settings.max_label_length
    if len(found) > most or any(not 1 <= len(x) <= longest for x in found):
        raise BadInput(
            f"labels: give at most MAX_LABELS_PER_TASK ({most}) labels of 1 to "
            f"MAX_LABEL_LENGTH ({longest}) characters",
            field="labels",
        )
    return found


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


def _timeout(opts: Any, settings: Settings) -> int:
    limit = settings.task_max_runtime_seconds
    if opts.timeout_seconds is None:
        return min(settings.task_default_timeout_seconds, limit)
    if not 1 <= opts.timeout_seconds <= limit:
        raise BadInput(
            f"options.timeoutSeconds: must be between 1 and TASK_MAX_RUNTIME_SECONDS ({limit}), "
            f"got {opts.timeout_seconds}",
            field="options.timeoutSeconds",
        )
    return int(opts.timeout_seconds)


def _run_at(opts: Any) -> datetime | None:
    if opts.run_at is not None and opts.delay_seconds is not None:
        raise BadInput(
            "options: give runAt or delaySeconds, not both", field="options.delaySeconds"
        )
    if opts.run_at is not None and opts.run_at.tzinfo is None:
        raise BadInput(
            "options.runAt: give a time zone, e.g. 2030-01-01T12:00:00Z", field="options.runAt"
        )
    run_at: datetime | None = opts.run_at
    return run_at


def _delay(opts: Any) -> int | None:
    if opts.delay_seconds is not None and opts.delay_seconds < 0:
        raise BadInput(
            f"options.delaySeconds: must be >= 0, got {opts.delay_seconds}",
            field="options.delaySeconds",
        )
    delay: int | None = opts.delay_seconds
    return delay


def _deadline(opts: Any, run_at: datetime | None) -> datetime | None:
    """options.deadline: with a time zone, and after runAt (it could never start). One in
    the past is taken: the task ends DEADLINE_EXCEEDED at once, never run (as a deadline
    that passes while it waits)."""
    deadline: datetime | None = opts.deadline
    if deadline is None:
        return None
    if deadline.tzinfo is None:
        raise BadInput(
            "options.deadline: give a time zone, e.g. 2030-01-01T12:00:00Z",
            field="options.deadline",
        )
    if run_at is not None and deadline <= run_at:
        raise BadInput(
            f"options.deadline: {deadline.isoformat()} is not after runAt "
            f"({run_at.isoformat()}), so the task could never start; give a later deadline "
            "or an earlier runAt",
            field="options.deadline",
        )
    if opts.delay_seconds and deadline.timestamp() <= _now() + opts.delay_seconds:
        raise BadInput(
            f"options.deadline: {deadline.isoformat()} is not after the end of delaySeconds "
            f"({opts.delay_seconds}), so the task could never start; give a later deadline or "
            "a shorter delay",
            field="options.deadline",
        )
    return deadline


def _now() -> float:
    return time.time()


def _rate_limit(opts: Any, task_type: TaskTypeLike) -> str | None:
    """The rate the task's starts are held to, as text (task.rate_limit): options.rateLimit,
    else its type's RATE_LIMIT, else none."""
    if opts.rate_limit is None:
        return str(task_type.rate_limit) if task_type.rate_limit is not None else None
    try:
        return str(parse_rate(opts.rate_limit))
    except ValueError:
        raise BadInput(
            f"options.rateLimit: {opts.rate_limit!r} is not a rate; write {RATE_RULE}",
            field="options.rateLimit",
        ) from None


def idempotency_key(opts: Any, settings: Settings) -> str | None:
    key, longest = opts.idempotency_key, settings.max_idempotency_key_length
    if key is not None and not 1 <= len(key) <= longest:
        raise BadInput(
            f"options.idempotencyKey: must be 1 to MAX_IDEMPOTENCY_KEY_LENGTH ({longest}) "
            "characters",
            field="options.idempotencyKey",
        )
    found: str | None = key
    return found


def webhook_url(
    url: str | None, settings: Settings, field: str = "options.webhookUrl"
) -> str | None:
    """A webhook URL as submitted: http or https, a host, at most MAX_WEBHOOK_URL_LENGTH
    characters, a host WEBHOOK_ALLOWLIST matches (an IP literal: one it allows). A name is
    resolved and checked again at each delivery (taskrunner.webhooks)."""
    if url is None:
        return None
    if not 1 <= len(url) <= MAX_WEBHOOK_URL_LENGTH or url != url.strip():
        raise BadInput(
            f"{field}: give an http:// or https:// URL of 1 to {MAX_WEBHOOK_URL_LENGTH} "
            "characters without surrounding spaces",
            field=field,
        )
    try:
        httpx.URL(url)  # what the delivery sends to: it must take it
        check_host(url, settings.webhook_allowlist, "WEBHOOK_ALLOWLIST")
    except (httpx.InvalidURL, ValueError) as exc:
        raise BadInput(
            f"{field}: {url!r} is not a URL ({exc}); give an http:// or https:// URL",
            field=field,
        ) from None
    except FetchRefused as exc:
        raise BadInput(
            f"{field}: {str(exc).replace('to fetch it', 'to send webhooks there')}", field=field
        ) from None
    return url
