"""Subscriptions over raw websockets: many at once on a few connections, the Redis channels
the api's hub holds, and the close code behind a client's transport error."""

from __future__ import annotations

import asyncio

from gql import Client, GraphQLRequest
from gql.transport.websockets import WebsocketsTransport
from redis.asyncio import Redis
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from tests.support.tasks import WATCH

PROTOCOL = Subprotocol("graphql-transport-ws")


async def subscribe_many(
    url: str,
    key: str | None,
    task_id: str,
    connections: int,
    per_connection: int,
    ready: asyncio.Event,
) -> list[list[str]]:
    """`connections` websockets each carrying `per_connection` WATCH subscriptions of
    `task_id`; `ready` is set once every one has its first event. Returns each
    subscription's cursors."""
    opened = 0

    async def one_connection() -> list[list[str]]:
        nonlocal opened
        transport = WebsocketsTransport(
            url=url.replace("http", "ws") + "/graphql",
            subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
            init_payload={"Authorization": f"Bearer {key}"},
        )
        async with Client(transport=transport) as session:

            async def one() -> list[str]:
                nonlocal opened
                cursors: list[str] = []
                agen = session.subscribe(GraphQLRequest(WATCH, variable_values={"id": task_id}))
                try:
                    async for item in agen:
                        cursors.append(item["taskUpdates"]["cursor"])
                        if len(cursors) == 1:
                            opened += 1
                            if opened == connections * per_connection:
                                ready.set()
                finally:
                    await agen.aclose()
                return cursors

            return list(await asyncio.gather(*(one() for _ in range(per_connection))))

    results = await asyncio.gather(*(one_connection() for _ in range(connections)))
    return [cursors for group in results for cursors in group]


async def redis_channels(redis_url: str) -> int:
    """How many of the api's channels (taskrunner:*) Redis has subscribers on."""
    redis = Redis.from_url(redis_url)
    try:
        return len(await redis.pubsub_channels("taskrunner:*"))
    finally:
        await redis.aclose()


def close_code(error: BaseException) -> int | None:
    """The websocket close code behind a gql transport error."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ConnectionClosed) and cause.rcvd is not None:
            return cause.rcvd.code
        cause = cause.__cause__
    return None
