"""Direct delivery of shared subscription results over graphql-transport-ws.

A live event fanned out to 1,000 `taskUpdates` subscriptions is executed once per shape
(`api.schema.SharedEventExecutor`), but each subscription still took its result through
graphql-core's response stream, strawberry's per-result pipeline (`Schema._stream`:
result conversion, extension results, `on_stream_result`), the transport handler's
message building and a JSON encoding of the whole `next` message: about half of the api's
CPU per delivery (py-spy under `bench/subscriptions.py`).

With `FanoutTransportWSHandler` as the view's `graphql_transport_ws_handler_class`, each
operation's task carries a `Delivery` (a context variable). A subscription resolver that
holds a shared, error-free result of a live event hands it to `Delivery.send` instead of
yielding the event: the result is encoded once (with the view's `encode_json`, exactly
the payload strawberry would send) and each subscriber's message is the operation's
`{"id":...,"type":"next","payload":` prefix, that payload and `}`, written to its socket.

While a subscription waits for live events, the hub may deliver one for it at once
(`send_now`, see `taskrunner.streams.task_events`): written to the socket from the hub's
dispatch, without waking the subscription's task, when the socket takes it without
waiting (`api.ws_transport.SEND_TEXT_NOW`) and the operation is still one of its
connection's. Anything else is left to the subscription's task, as above.

It is taken only where that changes nothing a client or an extension can see: the result
has no errors (errors go the usual way: classification, masking, process_errors), no
schema extension has per-result hooks (`get_results`, `on_stream_result`) and the
operation has no extension results; the operation has not completed. Everything else,
including backlog events and unshared results, goes through strawberry as before. Order
holds: the resolver sends from the operation's own task, between its yields, and the hub
only while that task waits for the next live event with none buffered.

To use it, the view sets `graphql_transport_ws_handler_class = FanoutTransportWSHandler`
and uvicorn runs `api.ws_transport.CoalescingWebSocketsProtocol` (for `send_now`);
without them every result goes through strawberry, as before.

Both websocket handlers here (`FanoutTransportWSHandler`, and `GraphQLWSHandler` for the
older graphql-ws protocol) also classify the errors of every result they send, as HTTP
answers are (`api.errors.classify`): an error inside a subscription, such as PostgreSQL
failing mid-stream, reaches the client as a code and a message (an unexpected one as
INTERNAL with an incident id, logged with its traceback), never as SQL or a traceback.
Both close a connection that sends no `connection_init` within the view's
`connection_init_wait_timeout` (strawberry's handler does; the graphql-ws one here too).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocketDisconnect
from strawberry.asgi import ASGIWebSocketAdapter
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import ConnectionInitMessage
from strawberry.types import ExecutionResult

from api.errors import classify
from api.ws_transport import SEND_TEXT_NOW

if TYPE_CHECKING:
    from starlette.websockets import WebSocket

INIT_TIMEOUT_CLOSE_CODE = 4408  # graphql-transport-ws: Connection initialisation timeout

_delivery: ContextVar[Delivery | None] = ContextVar("taskrunner_delivery", default=None)


def current() -> Delivery | None:
    """The delivery of the graphql-transport-ws operation running in this task, if any."""
    return _delivery.get()


class Delivery:
    """One graphql-transport-ws operation's way to its socket past strawberry's per-result
    pipeline. The operation's executor and extensions runner (`api.schema`) register
    here as strawberry makes them."""

    __slots__ = (
        "_operations",
        "_prefix",
        "_send_now",
        "executor",
        "operation",
        "runner",
        "view",
        "websocket",
    )

    def __init__(
        self,
        view: Any,
        websocket: WebSocket,
        operation: Operation[Any, Any],
        operations: dict[str, Operation[Any, Any]] | None = None,
    ) -> None:
        self.view = view
        self.websocket = websocket
        self.operation = operation
        self._operations = operations  # the connection's operations (strawberry's handler)
        now = (getattr(websocket, "scope", None) or {}).get("extensions", {}).get(SEND_TEXT_NOW)
        self._send_now: Callable[[str], bool] | None = (
            now.get("send") if isinstance(now, dict) else None
        )
        self.executor: Any = None  # api.schema.SharedEventExecutor, the operation's
        self.runner: Any = None  # api.schema.ExtensionsRunner, the operation's
        encoded_id = view.encode_json(operation.id)
        self._prefix = (
            f'{{"id":{encoded_id},"type":"next","payload":' if isinstance(encoded_id, str) else None
        )

    @property
    def usable(self) -> bool:
        """Whether results may go this way now (see the module's docstring)."""
        runner = self.runner
        return (
            self._prefix is not None
            and not self.operation.completed
            and runner is not None
            and runner.plain
        )

    def payload(self, data: Any) -> str | None:
        """The `next` payload of a result with `data` and nothing else, as strawberry's
        transport would encode it; None when the view encodes to bytes (binary frames)."""
        encoded = self.view.encode_json({"data": data})
        return encoded if isinstance(encoded, str) else None

    def send_now(self, payload: str) -> bool:
        """Send a `next` message with an encoded payload now, from outside the operation's
        task, if the operation still runs on its connection and the socket takes it
        without waiting; False when it was not sent (`send` it from the task)."""
        send_now, operation, operations = self._send_now, self.operation, self._operations
        if (
            send_now is None
            or operations is None
            or operation.completed
            or operations.get(operation.id) is not operation
        ):
            return False
        return send_now(f"{self._prefix}{payload}}}")

    async def send(self, payload: str) -> None:
        """Send a `next` message with an encoded payload (from `payload`), as strawberry's
        `Operation.send_next` would: nothing once the operation has completed."""
        if self.operation.completed:
            return
        try:
            await self.websocket.send_text(f"{self._prefix}{payload}}}")
        except WebSocketDisconnect as exc:
            raise WebSocketDisconnected from exc


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
            _delivery.set(Delivery(self.view, self.websocket.ws, operation, self.operations))
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
