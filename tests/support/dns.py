"""A stub of the system's DNS lookup (`socket.getaddrinfo`, which both taskrunner.fetch's
guard and the HTTP client go through): chosen names get chosen answers, anything else goes
to the real resolver; and a bare server that counts the connections it gets."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

_real_getaddrinfo = socket.getaddrinfo


class Dns:
    """A stub of the DNS lookup: each name in `answers` resolves to its successive answers
    (the last one repeats), and its lookups are counted. Other names are looked up for
    real (the test's own servers, PostgreSQL and Redis are reached by IP anyway)."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.lookups: dict[str, int] = dict.fromkeys(answers, 0)

    def getaddrinfo(
        self, host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> list[tuple[Any, ...]]:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in self.answers:
            return _real_getaddrinfo(host, port, family, type, proto, flags)
        turns = self.answers[name]
        answer = turns[min(self.lookups[name], len(turns) - 1)]
        self.lookups[name] += 1
        number = int(port or 0)
        found: list[tuple[Any, ...]] = []
        for text in answer:
            address = ipaddress.ip_address(text)
            if address.version == 4 and family in (0, socket.AF_INET):
                found.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (text, number)))
            elif address.version == 6 and family in (0, socket.AF_INET6):
                found.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (text, number, 0, 0)))
        if not found:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return found


def install_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[list[str]]]) -> Dns:
    """Answer `answers`' names with the Dns stub until the test ends."""
    stub = Dns(answers)
    monkeypatch.setattr(socket, "getaddrinfo", stub.getaddrinfo)
    return stub


InstallDns = Callable[[dict[str, list[list[str]]]], Dns]  # the `dns` fixtures' type


@contextlib.asynccontextmanager
async def counting_server(host: str, port: int) -> AsyncIterator[list[int]]:
    """A bare HTTP server on host:port that counts the connections it accepts (and answers
    each with an empty 200): the place a rebound name must never reach."""
    accepted = [0]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted[0] += 1
        with contextlib.suppress(ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, host, port)
    try:
        yield accepted
    finally:
        server.close()
        await server.wait_closed()
