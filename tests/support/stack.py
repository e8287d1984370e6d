"""A client of a running api as a test calls it: its URLs, an API key, GraphQL over HTTP
and websockets (`Stack`); and new API keys (`make_key`)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any

from gql import Client, GraphQLRequest
from gql.transport.httpx import HTTPXAsyncTransport
from gql.transport.websockets import WebsocketsTransport

from taskrunner import keys
from taskrunner.config import Settings
from taskrunner.db import create_engine

_numbers = itertools.count(1)


async def make_key(
    settings: Settings, owner: str = "tester", *, name: str | None = None, admin: bool = False
) -> str:
    """A new API key of `owner` in the test's database."""
    engine = create_engine(settings.require_database_url(), pool_size=1)
    name = name or f"{owner}-{next(_numbers)}"
    try:
        _, secret = await keys.create(engine, name=name, owner=owner, admin=admin)
    finally:
        await engine.dispose()
    return secret


@dataclass
class Stack:
    url: str
    settings: Settings
    key: str | None = None  # sent as `Authorization: Bearer <key>` (HTTP and connection_init)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    @classmethod
    async def keyed(cls, url: str, settings: Settings, owner: str = "tester") -> Stack:
        """A stack at `url` called with a new key of `owner`."""
        return cls(url, settings, await make_key(settings, owner))

    def as_key(self, key: str | None) -> Stack:
        """The same stack, called with another key (None: none)."""
        return dataclasses.replace(self, key=key)

    @property
    def graphql_url(self) -> str:
        return f"{self.url}/graphql"

    @property
    def ws_url(self) -> str:
        return self.graphql_url.replace("http://", "ws://")

    async def execute(self, query: str, **variables: Any) -> dict[str, Any]:
        """One GraphQL operation over HTTP with the gql client."""
        transport = HTTPXAsyncTransport(url=self.graphql_url, timeout=30, headers=self.headers)
        async with Client(transport=transport) as session:
            result: dict[str, Any] = await session.execute(
                GraphQLRequest(query, variable_values=variables or None)
            )
            return result

    def ws_client(self) -> Client:
        transport = WebsocketsTransport(
            url=self.ws_url,
            subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
            init_payload=dict(self.headers),
        )
        return Client(transport=transport)

    async def subscribe(
        self, query: str, *, limit: int | None = None, within: float = 20, **variables: Any
    ) -> list[dict[str, Any]]:
        """Collect a subscription's results until it completes (or `limit` arrive)."""
        got: list[dict[str, Any]] = []

        async def collect() -> None:
            async with self.ws_client() as session:
                agen = session.subscribe(GraphQLRequest(query, variable_values=variables or None))
                try:
                    async for item in agen:
                        got.append(item)
                        if limit is not None and len(got) >= limit:
                            break
                finally:
                    await agen.aclose()

        await asyncio.wait_for(collect(), within)
        return got
