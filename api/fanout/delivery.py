"""`Delivery`: one graphql-transport-ws operation's way to its socket past strawberry's
per-result pipeline.

strawberry takes each subscription result through graphql-core's response stream, its
per-result pipeline (`Schema._stream`: result conversion, extension results,
`on_stream_result`), the transport handler's message building and a JSON encoding of the
whole `next` message. With the engine's handler (`api.fanout.handlers`), each operation's
task carries a `Delivery` (a context variable), and a subscription resolver that holds a
shared, error-free result of a live event (`api.fanout.direct`) hands it to
`Delivery.send` instead of yielding the event: the result is encoded once (with the
view's `encode_json`, exactly the payload strawberry would send) and each subscriber's
message is the operation's `{"id":...,"type":"next","payload":` prefix, that payload and
`}`, written to its socket.

While a subscription waits for live events, the hub may deliver one for it at once
(`send_now`, see `taskrunner.streams.task_events`): written to the socket from the hub's
dispatch, without waking the subscription's task, when the socket takes it without
waiting (`api.fanout.websocket.SEND_TEXT_NOW`) and the operation is still one of its
connection's. Anything else is left to the subscription's task, as above.

It is taken only where that changes nothing a client or an extension can see: the result
has no errors (errors go the usual way: classification, masking, process_errors), no
schema extension has per-result hooks (`get_results`, `on_stream_result`) and the
operation has no extension results; the operation has not completed. Everything else,
including backlog events and unshared results, goes through strawberry. Order holds: the
resolver sends from the operation's own task, between its yields, and the hub only while
that task waits for the next live event with none buffered.

To use it, the view sets `graphql_transport_ws_handler_class = FanoutTransportWSHandler`
and uvicorn runs `api.fanout.websocket.CoalescingWebSocketsProtocol` (for `send_now`);
without them every result goes through strawberry.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocketDisconnect
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import Operation

from api.fanout.websocket import SEND_TEXT_NOW

if TYPE_CHECKING:
    from starlette.websockets import WebSocket

_delivery: ContextVar[Delivery | None] = ContextVar("taskrunner_delivery", default=None)


def current() -> Delivery | None:
    """The delivery of the graphql-transport-ws operation running in this task, if any."""
    return _delivery.get()


def start(delivery: Delivery) -> None:
    """Make `delivery` the current one of this task (the operation's, before it runs)."""
    _delivery.set(delivery)


class Delivery:
    """One graphql-transport-ws operation's way to its socket past strawberry's per-result
    pipeline. The operation's executor (`api.fanout.executor`) and extensions runner
    (`api.fanout.extensions`) register here as strawberry makes them."""

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
        self.executor: Any = None  # api.fanout.executor.SharedEventExecutor, the operation's
        self.runner: Any = None  # api.fanout.extensions.ExtensionsRunner, the operation's
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
