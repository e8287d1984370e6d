"""uvicorn's websocket protocol, writing each connection's frames once per loop iteration.

uvicorn (`websockets-sansio`, its default with the websockets library) writes every
outgoing frame to the socket as it is sent: one `write()` system call per message. Here
the frames a connection sends during one turn of the event loop are joined and written
together at the start of the next turn (or as soon as `FLUSH_BYTES` wait), so a live
event fanned out to many subscriptions on one connection costs one system call there.

A text message on an open connection without extensions (permessage-deflate is off here)
is also framed here, in a few operations, instead of through uvicorn's generic `send`
and the websockets library's frame builder; the bytes are the same (RFC 6455: FIN,
opcode 1, the length, no mask from a server).

Nothing else changes: frames keep their order (control frames, pings and the close
handshake go through the same buffer), the close handshake flushes first, and uvicorn's
flow control still applies (the transport pauses the protocol when its own buffer is full,
and `send` waits then). A frame waits at most for the rest of the loop turn in which it
was sent.

The protocol also offers that framing synchronously to the application, in the ASGI scope's
extensions (`scope["extensions"][SEND_TEXT_NOW]["send"]`: a callable taking the text,
answering whether it sent it; False when only uvicorn's `send` may send it now, e.g.
while the client does not read).
`api.fanout.delivery` uses it to deliver a live event from the hub without waking each
subscription's task.

Use it with uvicorn's `ws` option:
`ws="api.fanout.websocket:CoalescingWebSocketsProtocol"`.
"""

from __future__ import annotations

import asyncio
import struct
from asyncio.transports import BaseTransport, Transport
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

if TYPE_CHECKING:
    from uvicorn._types import ASGISendEvent

FLUSH_BYTES = 64 * 1024  # written at once, without waiting for the turn to end
SEND_TEXT_NOW = "taskrunner.websocket.send_text_now"  # in scope["extensions"]


class CoalescingTransport:
    """A transport whose writes are buffered and handed to the real one in one `write` at
    the next turn of the event loop (or once FLUSH_BYTES wait); every other
    call goes straight through (a close writes what is buffered first)."""

    __slots__ = ("_loop", "_pending", "_pending_bytes", "_scheduled", "transport")

    def __init__(self, transport: Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        pending = self._pending
        pending.append(bytes(data))
        self._pending_bytes += len(data)
        if self._pending_bytes >= FLUSH_BYTES:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_soon)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def _flush_soon(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        """Write what is buffered now."""
        pending = self._pending
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        self._pending_bytes = 0
        if not self.transport.is_closing():
            self.transport.write(data)

    def discard(self) -> None:
        """Drop what is buffered (the connection is gone)."""
        self._pending.clear()
        self._pending_bytes = 0

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self.discard()
        self.transport.abort()

    def write_eof(self) -> None:
        self.flush()
        self.transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() + self._pending_bytes

    def __getattr__(self, name: str) -> Any:  # is_closing, pause_reading, get_extra_info ...
        return getattr(self.transport, name)


def text_frame(data: bytes) -> bytes:
    """A final, unmasked text frame of `data` (what websockets' `Frame.serialize` makes
    for it on a server without extensions)."""
    length = len(data)
    if length < 126:
        return bytes((0x81, length)) + data
    if length < 65536:
        return struct.pack("!BBH", 0x81, 126, length) + data
    return struct.pack("!BBQ", 0x81, 127, length) + data


class CoalescingWebSocketsProtocol(WebSocketsSansIOProtocol):
    """uvicorn's `websockets-sansio` protocol over a `CoalescingTransport`, framing plain
    text messages itself."""

    async def run_asgi(self) -> None:
        self.scope["extensions"][SEND_TEXT_NOW] = {"send": self.send_text_now}
        await super().run_asgi()

    def send_text_now(self, text: str) -> bool:
        """Send a text message now if the connection is open and writable (what `send`
        would do without waiting); False when it did not."""
        conn = self.conn
        if (
            self.handshake_complete
            and not self.close_sent
            and not self.disconnected
            and self.initial_response is None
            and self.writable.is_set()
            and conn.state is State.OPEN
            and not conn.expect_continuation_frame
            and not conn.extensions
            and not conn.debug
        ):
            self.transport.write(text_frame(text.encode()))
            return True
        return False

    async def send(self, message: ASGISendEvent) -> None:
        if (
            message["type"] == "websocket.send"
            and message.get("bytes") is None
            and (text := message.get("text")) is not None
            and self.send_text_now(text)
        ):
            return
        await super().send(message)  # everything else, as uvicorn does it

    def connection_made(self, transport: BaseTransport) -> None:
        super().connection_made(transport)  # reads addresses and TLS off the real one
        self.transport = CoalescingTransport(self.transport, self.loop)  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        transport = self.transport
        if isinstance(transport, CoalescingTransport):
            transport.discard()
        super().connection_lost(exc)
