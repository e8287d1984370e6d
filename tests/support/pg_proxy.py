"""A TCP proxy in front of the embedded PostgreSQL's unix socket that can hold back the
server's replies: a real network delay, aimed at one reply, for race tests.

`hold(marker)` makes the proxy keep the first reply that contains `marker` (e.g. a value
only one row has) until `release()`; `held` is set once it holds it, i.e. once the
statement has run on the server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from sqlalchemy.engine import make_url


class HoldingProxy:
    def __init__(self, database_url: str) -> None:
        query = parse_qs(urlsplit(database_url).query)
        (socket_dir,) = query["host"]
        (self.socket,) = [
            p for p in Path(socket_dir).glob(".s.PGSQL.*") if not p.name.endswith(".lock")
        ]
        self.database_url = database_url
        self.port = 0
        self._server: asyncio.Server | None = None
        self._marker: bytes | None = None
        self.held = asyncio.Event()
        self._released = asyncio.Event()
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """The database URL through this proxy (TCP on 127.0.0.1)."""
        url = make_url(self.database_url)
        return url.set(host="127.0.0.1", port=self.port, query={}).render_as_string(
            hide_password=False
        )

    def hold(self, marker: bytes) -> None:
        self._marker = marker
        self.held.clear()
        self._released.clear()

    def release(self) -> None:
        self._marker = None
        self._released.set()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, replies: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if replies and self._marker is not None and self._marker in data:
                    self.held.set()
                    await self._released.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(str(self.socket))
        for task in (
            asyncio.create_task(self._pipe(reader, up_writer, replies=False)),
            asyncio.create_task(self._pipe(up_reader, writer, replies=True)),
        ):
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[HoldingProxy]:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            self.release()
            self._server.close()
            for task in list(self._pipes):
                task.cancel()
            await asyncio.gather(*self._pipes, return_exceptions=True)
            await self._server.wait_closed()
