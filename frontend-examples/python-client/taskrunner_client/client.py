"""The client: every operation of the API (generated in api.py), plus what a caller
writes by hand every time: following a task or a workflow to its end across dropped
connections, and a task given as JSON (`{"sleep": {"seconds": 2}}`) as its typed input."""

from __future__ import annotations

import asyncio
import difflib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import aclosing
from typing import Any, cast, get_args

from gql.transport.exceptions import TransportClosed, TransportConnectionFailed
from pydantic import BaseModel, TypeAdapter

from .api import (
    Operations,
    TaskEventBase,
    TaskEventStatusChanged,
    TaskEventWorkflowStatusChanged,
    TaskSpecInput,
    TaskStatus,
    WorkflowStatus,
)
from .transport import TaskrunnerError

FINISHED = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED})
WORKFLOW_FINISHED = frozenset(
    {WorkflowStatus.SUCCEEDED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED}
)

_SPEC: TypeAdapter[Any] = TypeAdapter(TaskSpecInput)


def _task_types() -> dict[str, type[BaseModel]]:
    """The field of TaskSpecInput (`sleep`, `webScrape`, ...) of each task type's input
    model, as the generated serializer writes it."""
    members: tuple[type[BaseModel], ...] = get_args(get_args(TaskSpecInput)[0])
    found = {}
    for member in members:
        empty = member.model_construct()  # (its fields unset: not valid, only its tag is read)
        (tag,) = _SPEC.dump_python(empty, exclude_unset=True, warnings=False)
        found[tag] = member
    return found


TASK_TYPES = _task_types()


def task_spec(value: Mapping[str, Any]) -> TaskSpecInput:
    """A TaskSpecInput given as JSON, one task type and its input: `{"echo": {"message":
    "hi"}}` is `EchoInput(message="hi")`. ValueError (pydantic's, naming the field) when
    it is not one."""
    if len(value) != 1:
        raise ValueError(f"a task is one of {sorted(TASK_TYPES)} with its input, not {value}")
    ((name, fields),) = value.items()
    model = TASK_TYPES.get(name)
    if model is None:
        close = difflib.get_close_matches(name, TASK_TYPES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown task type {name!r}.{hint} Known: {sorted(TASK_TYPES)}")
    return model.model_validate(fields)  # type: ignore[return-value]  # a member of the union


class TaskrunnerClient(Operations):
    """`TaskrunnerClient(url, key)`: `url` the GraphQL endpoint, `key` an API key. Every
    operation of operations.graphql is a method (`submit_task`, `list_tasks`,
    `create_schedule`, `pause_queue`, `tasks_updates`, ...); `follow` and
    `follow_workflow` are added here."""

    async def follow(
        self, task_id: str, after: str | None = None, *, reconnects: int = 5
    ) -> AsyncGenerator[TaskEventBase, None]:
        """The task's events until it finishes, across dropped connections: after one it
        subscribes again from the last cursor it got, so no event is missed or repeated."""

        def finished(event: TaskEventBase) -> bool:
            return isinstance(event, TaskEventStatusChanged) and event.status in FINISHED

        async with aclosing(
            self._follow(
                lambda cursor: self.task_updates(task_id, cursor), after, finished, reconnects
            )
        ) as events:
            async for event in events:
                yield event

    async def follow_workflow(
        self, workflow_id: str, after: str | None = None, *, reconnects: int = 5
    ) -> AsyncGenerator[TaskEventBase, None]:
        """The workflow's events until it ends (the WorkflowStatusChanged to SUCCEEDED,
        FAILED or CANCELLED), across dropped connections, as `follow` does for a task."""

        def ended(event: TaskEventBase) -> bool:
            return (
                isinstance(event, TaskEventWorkflowStatusChanged)
                and event.workflow_status in WORKFLOW_FINISHED
            )

        async with aclosing(
            self._follow(
                lambda cursor: self.workflow_updates(workflow_id, cursor), after, ended, reconnects
            )
        ) as events:
            async for event in events:
                yield event

    async def _follow(
        self,
        subscribe: Callable[[str | None], AsyncIterator[object]],
        after: str | None,
        last: Callable[[TaskEventBase], bool],
        reconnects: int,
    ) -> AsyncGenerator[TaskEventBase, None]:
        """`subscribe(after)` again from the last cursor after a dropped connection, until
        an event for which `last` holds (or the subscription completes). An event of a
        kind this client does not know (the server added one) has no cursor here: it is
        skipped, and a resumption may bring it again."""
        failures = 0
        while True:
            try:
                # (each generated subscription method is an async generator)
                subscription = cast("AsyncGenerator[object, None]", subscribe(after))
                async with aclosing(subscription) as events:
                    async for event in events:
                        if not isinstance(event, TaskEventBase):
                            continue
                        after, failures = event.cursor, 0
                        yield event
                        if last(event):
                            return
                return
            except (TransportClosed, TransportConnectionFailed, OSError) as error:
                reason: Exception = error
            except TaskrunnerError as error:
                if error.code != "LIMIT_EXCEEDED":  # we read too slowly: resume
                    raise
                reason = error
            failures += 1
            if failures > reconnects:
                raise ConnectionError(f"gave up after {reconnects} reconnects: {reason}")
            await asyncio.sleep(min(0.5 * 2**failures, 10))
