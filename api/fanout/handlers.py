"""The websocket protocol handlers of the GraphQL view: strawberry's, for
graphql-transport-ws (`FanoutTransportWSHandler`) and for the older graphql-ws
(`GraphQLWSHandler`).

`FanoutTransportWSHandler` gives each operation's task a `Delivery`
(`api.fanout.delivery`), the engine's way to the socket. Both classify the errors of every
result they send, as HTTP answers are (`api.errors.classify`): an error inside a
subscription, such as PostgreSQL failing mid-stream, reaches the client as a code and a
message (an unexpected one as INTERNAL with an incident id, logged with its traceback),
never as SQL or a traceback. Both close a connection that sends no `connection_init`
within the view's `connection_init_wait_timeout` (strawberry's graphql-transport-ws
handler does; the graphql-ws one here too).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from strawberry.asgi import ASGIWebSocketAdapter
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import ConnectionInitMessage
from strawberry.types import ExecutionResult

from api.errors import classify
from api.fanout.delivery import Delivery, start

INIT_TIMEOUT_CLOSE_CODE = 4408  # graphql-transport-ws: Connection initialisation timeout


def classified(result: ExecutionResult) -> ExecutionResult:
    """The result with its errors as clients should see them (`api.errors.classify`)."""
    if result.errors:
        result.errors = [classify(e) for e in result.errors]
    return result


async def _classified(source: AsyncIterator[Any]) -> AsyncGenerator[Any, None]:
    async for result in source:
        yield classified(result) if isinstance(result, ExecutionResult) else result


class FanoutTransportWSHandler(BaseGraphQLTransportWSHandler[Any, Any]):
    """strawberry's graphql-transport-ws handler; each operation's task gets a
    `Delivery` (ASGI websockets only), and the errors it sends are classified."""

    async def run_operation(self, operation: Operation[Any, Any]) -> None:
        if isinstance(self.websocket, ASGIWebSocketAdapter):
            start(Delivery(self.view, self.websocket.ws, operation, self.operations))
        await super().run_operation(operation)

    async def _send_result_stream(self, operation: Operation[Any, Any], result_source: Any) -> None:
        # the one way strawberry's results (first, pre-execution errors included) take to
        # the socket; the caller closes `result_source` itself
        results = _classified(result_source)
        try:
            await super()._send_result_stream(operation, results)
        finally:
            await results.aclose()


class GraphQLWSHandler(BaseGraphQLWSHandler[Any, Any]):
    """strawberry's handler of the older graphql-ws protocol, which classifies the errors
    it sends and closes (4408) a connection without `connection_init` after the view's
    `connection_init_wait_timeout`, as the graphql-transport-ws handler does."""

    _init_received = False

    async def handle(self) -> None:
        timer = asyncio.create_task(self._close_without_init())
        try:
            await super().handle()
        finally:
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer

    async def _close_without_init(self) -> None:
        await asyncio.sleep(self.view.connection_init_wait_timeout.total_seconds())
        if not self._init_received:
            with contextlib.suppress(Exception):  # gone already
                await self.websocket.close(
                    code=INIT_TIMEOUT_CLOSE_CODE, reason="Connection initialisation timeout"
                )

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        self._init_received = True
        await super().handle_connection_init(message)

    async def send_data_message(self, execution_result: ExecutionResult, operation_id: str) -> None:
        await super().send_data_message(classified(execution_result), operation_id)
