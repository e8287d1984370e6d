"""A small typed client of the taskrunner GraphQL API: HTTP for queries and mutations,
graphql-transport-ws for subscriptions, the API key on both."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import aclosing
from typing import Any

from gql import Client, GraphQLRequest
from gql.transport.exceptions import (
    TransportClosed,
    TransportConnectionFailed,
    TransportQueryError,
)
from gql.transport.httpx import HTTPXAsyncTransport
from gql.transport.websockets import WebsocketsTransport
from pydantic import TypeAdapter

from .models import StatusChanged, Task, TaskEvent, Workflow, WorkflowStatusChanged
from .operations import Operations, check_input, load_schema

_EVENT: TypeAdapter[TaskEvent] = TypeAdapter(TaskEvent)


class TaskrunnerError(Exception):
    """The server answered with a GraphQL error; `code` is its `extensions.code`."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(f"{code}: {message}" if code else message)
        self.code = code

    @classmethod
    def of(cls, error: TransportQueryError) -> TaskrunnerError:
        first: Any = (error.errors or [{}])[0]
        if not isinstance(first, dict):
            return cls(str(error))
        code = (first.get("extensions") or {}).get("code")
        return cls(str(first.get("message", error)), code if isinstance(code, str) else None)


class TaskrunnerClient:
    """`url` is the GraphQL endpoint (`http://127.0.0.1:8000/graphql`), `key` an API key
    (None: send none, for a server with AUTH_DISABLED)."""

    def __init__(
        self,
        url: str,
        key: str | None,
        *,
        operations: Operations | None = None,
        timeout: float = 30,
    ) -> None:
        self.url = url
        self.operations = operations or Operations.build(load_schema())
        self.timeout = timeout
        self._auth = {"Authorization": f"Bearer {key}"} if key else {}

    @property
    def ws_url(self) -> str:
        scheme, rest = self.url.split("://", 1)
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}"

    async def _execute(self, request: GraphQLRequest) -> dict[str, Any]:
        transport = HTTPXAsyncTransport(url=self.url, headers=self._auth, timeout=self.timeout)
        client = Client(
            transport=transport, schema=self.operations.schema, execute_timeout=self.timeout
        )
        try:
            async with client as session:
                result: dict[str, Any] = await session.execute(request)
        except TransportQueryError as error:
            raise TaskrunnerError.of(error) from error
        return result

    async def submit_task(
        self, task: Mapping[str, object], options: Mapping[str, object] | None = None
    ) -> Task:
        """Submit one task, e.g. `{"sleep": {"seconds": 2}}`; it is QUEUED when this returns.

        Raises ValueError, before sending anything, when the input does not fit the schema.
        """
        schema = self.operations.schema
        problems = check_input(schema, "TaskSpecInput", task)
        if options is not None:
            problems += check_input(schema, "TaskOptionsInput", options)
        if problems:
            raise ValueError("; ".join(problems))
        request = self.operations.request(
            self.operations.submit_task, task=dict(task), options=options and dict(options)
        )
        return Task.model_validate((await self._execute(request))["submitTask"])

    async def get_task(self, task_id: str) -> Task | None:
        request = self.operations.request(self.operations.get_task, id=task_id)
        found = (await self._execute(request))["task"]
        return None if found is None else Task.model_validate(found)

    async def task_updates(
        self, task_id: str, after: str | None = None
    ) -> AsyncGenerator[TaskEvent, None]:
        """One subscription to the task's events after the cursor `after` (all when None);
        it ends after the terminal StatusChanged."""
        request = self.operations.request(self.operations.task_updates, id=task_id, after=after)
        async with aclosing(self._subscribe(request, "taskUpdates")) as events:
            async for event in events:
                yield event

    async def submit_workflow(self, workflow: Mapping[str, object]) -> Workflow:
        """Submit a workflow (a `WorkflowInput`: `{"steps": [{"key": "a", "task": {...}},
        ...]}`), all or none; its steps are QUEUED when this returns.

        Raises ValueError, before sending anything, when the input does not fit the schema.
        """
        problems = check_input(self.operations.schema, "WorkflowInput", workflow)
        if problems:
            raise ValueError("; ".join(problems))
        request = self.operations.request(self.operations.submit_workflow, workflow=workflow)
        return Workflow.model_validate((await self._execute(request))["submitWorkflow"])

    async def get_workflow(self, workflow_id: str) -> Workflow | None:
        request = self.operations.request(self.operations.get_workflow, id=workflow_id)
        found = (await self._execute(request))["workflow"]
        return None if found is None else Workflow.model_validate(found)

    async def workflow_updates(
        self, workflow_id: str, after: str | None = None
    ) -> AsyncGenerator[TaskEvent, None]:
        """One subscription to every event of the workflow's steps after the cursor `after`
        (all when None), in commit order; it ends after the WorkflowStatusChanged that ends
        the workflow."""
        request = self.operations.request(
            self.operations.workflow_updates, id=workflow_id, after=after
        )
        async with aclosing(self._subscribe(request, "workflowUpdates")) as events:
            async for event in events:
                yield event

    async def _subscribe(
        self, request: GraphQLRequest, field: str
    ) -> AsyncGenerator[TaskEvent, None]:
        transport = WebsocketsTransport(
            url=self.ws_url,
            subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
            init_payload=self._auth,  # graphql-transport-ws: the key goes in connection_init
            connect_timeout=self.timeout,
        )
        try:
            async with Client(transport=transport, schema=self.operations.schema) as session:
                async for result in session.subscribe(request):
                    yield _EVENT.validate_python(result[field])
        except TransportQueryError as error:
            raise TaskrunnerError.of(error) from error

    async def follow(
        self, task_id: str, after: str | None = None, *, reconnects: int = 5
    ) -> AsyncGenerator[TaskEvent, None]:
        """The task's events until it finishes, across dropped connections: after one it
        subscribes again from the last cursor it got, so no event is missed or repeated."""

        def finished(event: TaskEvent) -> bool:
            return isinstance(event, StatusChanged) and event.status.finished

        async with aclosing(
            self._follow(
                lambda cursor: self.task_updates(task_id, cursor), after, finished, reconnects
            )
        ) as events:
            async for event in events:
                yield event

    async def follow_workflow(
        self, workflow_id: str, after: str | None = None, *, reconnects: int = 5
    ) -> AsyncGenerator[TaskEvent, None]:
        """The workflow's events until it ends (its WorkflowStatusChanged to SUCCEEDED,
        FAILED or CANCELLED), across dropped connections, as `follow` does for a task."""

        def ended(event: TaskEvent) -> bool:
            return isinstance(event, WorkflowStatusChanged) and event.workflow_status.finished

        async with aclosing(
            self._follow(
                lambda cursor: self.workflow_updates(workflow_id, cursor), after, ended, reconnects
            )
        ) as events:
            async for event in events:
                yield event

    async def _follow(
        self,
        subscribe: Callable[[str | None], AsyncGenerator[TaskEvent, None]],
        after: str | None,
        last: Callable[[TaskEvent], bool],
        reconnects: int,
    ) -> AsyncGenerator[TaskEvent, None]:
        """`subscribe(after)` again from the last cursor after a dropped connection, until
        an event for which `last` holds (or the subscription completes)."""
        failures = 0
        while True:
            try:
                async with aclosing(subscribe(after)) as events:
                    async for event in events:
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
