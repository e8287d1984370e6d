"""Helpers the benchmark scripts share: GraphQL over HTTP, stderr progress, percentiles.

Load is generated with aiohttp (`Client`): httpx costs the client ~7 ms of CPU per request
with 50 connections on a 2-core machine, so the client, not the service, was measured."""

from __future__ import annotations

import math
import sys
from typing import Any

import aiohttp
import httpx
import orjson


class GraphQLError(Exception):
    pass


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def gql(client: httpx.AsyncClient, url: str, query: str, **variables: Any) -> Any:
    """One GraphQL operation; its `data`, or GraphQLError with what went wrong."""
    try:
        response = await client.post(
            url, content=orjson.dumps({"query": query, "variables": variables})
        )
    except httpx.HTTPError as exc:
        raise GraphQLError(f"HTTP error talking to {url}: {exc!r}") from None
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise GraphQLError(f"HTTP {response.status_code}: {response.text[:500]}") from None
    if body.get("errors"):
        raise GraphQLError(f"GraphQL errors: {orjson.dumps(body['errors']).decode()}")
    if response.status_code != 200 or body.get("data") is None:
        raise GraphQLError(f"HTTP {response.status_code}: {response.text[:500]}")
    return body["data"]


class Client:
    """GraphQL over HTTP with aiohttp: `async with Client(url, key, connections) as c:`
    then `await c.gql(query, **variables)` -> `data` (GraphQLError otherwise)."""

    def __init__(self, url: str, api_key: str | None = None, connections: int = 100) -> None:
        self.url = url
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        self._session = aiohttp.ClientSession(
            headers=self._headers,
            # idle connections dropped after 2 s, before uvicorn's 5 s keep-alive timeout:
            # with equal timeouts a request can go out on a connection the server is
            # just closing
            connector=aiohttp.TCPConnector(limit=self._connections, keepalive_timeout=2.0),
            timeout=aiohttp.ClientTimeout(total=60),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def gql(self, query: str, **variables: Any) -> Any:
        assert self._session is not None, "use `async with Client(...)`"
        payload = orjson.dumps({"query": query, "variables": variables})
        try:
            async with self._session.post(self.url, data=payload) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise GraphQLError(f"HTTP error talking to {self.url}: {exc!r}") from None
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise GraphQLError(f"HTTP {status}: {raw[:500]!r}") from None
        if body.get("errors"):
            raise GraphQLError(f"GraphQL errors: {orjson.dumps(body['errors']).decode()}")
        if status != 200 or body.get("data") is None:
            raise GraphQLError(f"HTTP {status}: {raw[:500]!r}")
        return body["data"]


def percentile(sorted_values: list[float], p: float, digits: int = 1) -> float | None:
    """Nearest-rank percentile; None when there is nothing to rank."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return round(sorted_values[rank - 1], digits)
