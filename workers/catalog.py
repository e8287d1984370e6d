"""The task catalog: every module in `workers.tasks` that defines NAME, Input and run.

Adding a task type is adding one module there. The arq functions (workers.settings)
and the GraphQL `TaskSpecInput` (api.types) both derive from `catalog()`.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from pydantic import BaseModel

from taskrunner.retries import RetryPolicy
from workers import tasks as tasks_package
from workers.context import TaskContext

RunFn = Callable[[TaskContext, Any], Coroutine[Any, Any, Any]]


@dataclass(frozen=True)
class TaskType:
    name: str
    description: str
    input_model: type[BaseModel]
    run: RunFn
    retry: RetryPolicy = field(default_factory=RetryPolicy)  # the module's RETRY, if any


def _load(module_name: str) -> TaskType:
    module = importlib.import_module(f"{tasks_package.__name__}.{module_name}")
    name, model, run = (getattr(module, a, None) for a in ("NAME", "Input", "run"))
    if not isinstance(name, str) or not name.isidentifier():
        raise TypeError(f"{module.__name__}: NAME must be an identifier string")
    if not (inspect.isclass(model) and issubclass(model, BaseModel)):
        raise TypeError(f"{module.__name__}: Input must be a pydantic BaseModel")
    if not inspect.iscoroutinefunction(run):
        raise TypeError(f"{module.__name__}: run must be `async def run(ctx, input)`")
    retry = getattr(module, "RETRY", RetryPolicy())
    if not isinstance(retry, RetryPolicy):
        raise TypeError(f"{module.__name__}: RETRY must be a taskrunner.retries.RetryPolicy")
    description = inspect.cleandoc(module.__doc__ or name).split("\n\n")[0]
    return TaskType(name=name, description=description, input_model=model, run=run, retry=retry)


@cache
def catalog() -> dict[str, TaskType]:
    """Task types by name, in module order."""
    found = [
        _load(info.name)
        for info in pkgutil.iter_modules(tasks_package.__path__)
        if not info.name.startswith("_")
    ]
    return {t.name: t for t in sorted(found, key=lambda t: t.name)}
