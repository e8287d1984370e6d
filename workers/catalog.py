"""The task catalog: every module in `workers.tasks` that defines NAME, Input and run.

Adding a task type is adding one module there. The arq functions (workers.settings)
and the GraphQL `TaskSpecInput` (api.inputs) both derive from `catalog()`.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any, TypeAlias

from pydantic import BaseModel, ValidationError

from taskrunner.config import QUEUE_NAME, QUEUE_NAME_RULE, Settings, get_settings
from taskrunner.dag import InputChecked
from taskrunner.errors import ConfigError
from taskrunner.rates import Rate, parse_rate
from taskrunner.retries import RetryPolicy

# The api imports this module for the task input models: importing it loads no other
# module of `workers` (the task modules are imported when `catalog()` is called).
if TYPE_CHECKING:
    from workers.task_context import TaskContext

log = logging.getLogger(__name__)
TASKS_PACKAGE = "workers.tasks"  # the built-in task types
DEFAULT_QUEUE = "default"

RunFn: TypeAlias = "Callable[[TaskContext, Any], Coroutine[Any, Any, Any]] | Callable[..., Any]"


@dataclass(frozen=True)
class TaskType:
    name: str
    description: str
    input_model: type[BaseModel]
    run: RunFn
    retry: RetryPolicy = field(default_factory=RetryPolicy)  # the module's RETRY, if any
    queue: str = DEFAULT_QUEUE  # the module's QUEUE: the named queue its tasks default to
    # the module's `concurrency(input) -> (key, limit) | None`: a default concurrency key
    concurrency: Callable[[Any], tuple[str, int] | None] | None = None
    module: str = ""  # the module that defines it (what a child process imports)
    # runs in a child process of the worker's pool: a plain `def run`, or `PROCESS = True`
    process: bool = False
    # per task: the module's `in_process(input) -> bool`; True runs its `run_in_process`
    # (a plain def) in a child process instead of `run` (e.g. `sleep {blocking: true}`)
    in_process: Callable[[Any], bool] | None = None
    rate_limit: Rate | None = None  # the module's RATE_LIMIT: starts of the type, all workers
    # the module's on_success, on_failure, on_retry (async def hook(task)): workers.hooks
    hooks: Mapping[str, Callable[[Any], Awaitable[None]]] = field(default_factory=dict)


def _hooks(module: Any) -> dict[str, Callable[[Any], Awaitable[None]]]:
    """The module's on_success, on_failure and on_retry (workers.hooks)."""
    hooks = {}
    for hook in ("on_success", "on_failure", "on_retry"):
        found = getattr(module, hook, None)
        if found is None:
            continue
        if not inspect.iscoroutinefunction(found):
            raise TypeError(
                f"{module.__name__}: {hook} must be `async def {hook}(task)` (a hook runs in "
                "the worker's event loop after the status is committed)"
            )
        hooks[hook] = found
    return hooks


def _load(module_name: str) -> TaskType:
    module = importlib.import_module(module_name)
    name, model, run = (getattr(module, a, None) for a in ("NAME", "Input", "run"))
    if not isinstance(name, str) or not name.isidentifier():
        raise TypeError(f"{module.__name__}: NAME must be an identifier string")
    if not (inspect.isclass(model) and issubclass(model, BaseModel)):
        raise TypeError(f"{module.__name__}: Input must be a pydantic BaseModel")
    if not callable(run):
        raise TypeError(
            f"{module.__name__}: run must be `async def run(ctx, input)` (in the worker's "
            "event loop) or `def run(ctx, input)` (in a child process)"
        )
    process = getattr(module, "PROCESS", False)
    if not isinstance(process, bool):
        raise TypeError(f"{module.__name__}: PROCESS must be True or False")
    process = process or not inspect.iscoroutinefunction(run)
    in_process = getattr(module, "in_process", None)
    if in_process is not None and not (
        callable(in_process) and callable(getattr(module, "run_in_process", None))
    ):
        raise TypeError(
            f"{module.__name__}: in_process(input) needs a `def run_in_process(ctx, input)` "
            "to run in a child process"
        )
    rate_text = getattr(module, "RATE_LIMIT", None)
    rate = None
    if rate_text is not None:
        try:
            rate = parse_rate(rate_text if isinstance(rate_text, str) else repr(rate_text))
        except ValueError as exc:
            raise TypeError(f"{module.__name__}: RATE_LIMIT: {exc}") from None
    retry = getattr(module, "RETRY", RetryPolicy())
    if not isinstance(retry, RetryPolicy):
        raise TypeError(f"{module.__name__}: RETRY must be a taskrunner.retries.RetryPolicy")
    hooks = _hooks(module)
    queue = getattr(module, "QUEUE", DEFAULT_QUEUE)
    if not isinstance(queue, str) or not QUEUE_NAME.match(queue):
        raise TypeError(f"{module.__name__}: QUEUE must be a queue name ({QUEUE_NAME_RULE})")
    concurrency = getattr(module, "concurrency", None)
    if concurrency is not None and not callable(concurrency):
        raise TypeError(f"{module.__name__}: concurrency must be a function of the input")
    description = inspect.cleandoc(module.__doc__ or name).split("\n\n")[0]
    return TaskType(
        name=name,
        description=description,
        input_model=model,
        run=run,
        retry=retry,
        queue=queue,
        concurrency=concurrency,
        module=module_name,
        process=process,
        in_process=in_process,
        rate_limit=rate,
        hooks=hooks,
    )


def packages() -> list[str]:
    """The packages whose modules are task types: ours, then TASKRUNNER_TASK_MODULES."""
    extra = [p.strip() for p in get_settings().taskrunner_task_modules.split(",") if p.strip()]
    return [TASKS_PACKAGE, *extra]


def _modules(package_name: str) -> list[str]:
    try:
        package = importlib.import_module(package_name)
    except ImportError as exc:
        raise ConfigError(
            f"TASKRUNNER_TASK_MODULES: cannot import {package_name!r} ({exc}); make it "
            "importable (installed, or on PYTHONPATH)"
        ) from None
    if not hasattr(package, "__path__"):  # a single module
        return [package_name]
    return [
        f"{package_name}.{info.name}"
        for info in pkgutil.iter_modules(package.__path__)
        if not info.name.startswith("_")
    ]


@cache
def catalog() -> dict[str, TaskType]:
    """Task types by name, sorted. Two modules defining the same NAME is an error."""
    found: dict[str, tuple[str, TaskType]] = {}
    for package_name in packages():
        for module_name in _modules(package_name):
            task_type = _load(module_name)
            if task_type.name in found:
                raise ConfigError(
                    f"task type {task_type.name!r} is defined twice: in "
                    f"{found[task_type.name][0]} and in {module_name}; rename one NAME"
                )
            found[task_type.name] = (module_name, task_type)
    return {name: found[name][1] for name in sorted(found)}


def served_queues(settings: Settings) -> list[str]:
    """The named queues a worker serves: WORKER_QUEUES, or when it is empty `default` and
    every queue a task type declares (a plain `taskrunner worker` runs every task type)."""
    if settings.worker_queues:
        return settings.queues()
    declared = sorted({t.queue for t in catalog().values()} - {DEFAULT_QUEUE})
    return [DEFAULT_QUEUE, *declared]


def input_check(settings: Settings) -> Callable[[str, Any, Any], InputChecked]:
    """How a workflow's step's input bound from its parents' results is checked when it
    becomes ready (taskrunner.dag.check_bound_inputs): by its type's input model, as the
    api checks a submitted one, with the errors naming its fields; valid, with the type's
    default concurrency key for it, and the one the input as submitted had. A type not in
    the catalog is left to the worker that runs it."""
    context = {"max_runtime_seconds": settings.task_max_runtime_seconds, "settings": settings}

    def default_key(task_type: TaskType, submitted: Any) -> str | None:
        assert task_type.concurrency is not None
        try:
            model = task_type.input_model.model_validate(submitted, context=context)
            found = task_type.concurrency(model)
        except Exception:  # invalid (the api gave it no default key either), or a bug
            return None
        return found[0] if found else None

    def check(task_type: str, submitted: Any, value: Any) -> InputChecked:
        found = catalog().get(task_type)
        if found is None:
            return InputChecked()
        try:
            model = found.input_model.model_validate(value, context=context)
        except ValidationError as exc:
            errors = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'input'}: {e['msg']}" for e in exc.errors()
            )
            return InputChecked(
                f"the input bound from its parents' results is not a valid {task_type} "
                f"input: {errors}"
            )
        if found.concurrency is None:
            return InputChecked()
        try:
            default = found.concurrency(model)
        except Exception:  # a bug of the type's: the step keeps the key it has
            log.exception("%s: its concurrency() failed on a bound input", task_type)
            return InputChecked()
        return InputChecked(concurrency=default, submitted_key=default_key(found, submitted))

    return check
