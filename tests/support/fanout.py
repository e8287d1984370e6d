"""The api with or without api.fanout's direct delivery of shared subscription results,
and a count of the messages that went the direct way."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

from starlette.routing import WebSocketRoute
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
)

from api.app import create_app
from api.fanout.delivery import Delivery
from taskrunner.config import Settings
from tests.support.servers import run_api


@contextlib.asynccontextmanager
async def run_direct_api(settings: Settings, direct: bool = True) -> AsyncIterator[str]:
    """`run_api` as api.app configures it (api.fanout's transport handler: direct
    delivery), or with strawberry's own handler instead (`direct=False`)."""
    app = create_app(settings)
    if not direct:
        for route in app.routes:
            if isinstance(route, WebSocketRoute):
                endpoint: Any = route.endpoint
                endpoint.graphql_transport_ws_handler_class = BaseGraphQLTransportWSHandler
    async with run_api(settings, app) as url:
        yield url


@contextlib.contextmanager
def counting_direct_sends() -> Iterator[list[tuple[str, str]]]:
    """The `next` messages sent past strawberry's per-result pipeline: ("task", payload)
    from the subscription's task, ("hub", payload) from the hub's dispatch."""
    sent: list[tuple[str, str]] = []
    original, original_now = Delivery.send, Delivery.send_now

    async def send(self: Delivery, payload: str) -> None:
        sent.append(("task", payload))
        await original(self, payload)

    def send_now(self: Delivery, payload: str) -> bool:
        done = original_now(self, payload)
        if done:
            sent.append(("hub", payload))
        return done

    Delivery.send = send  # type: ignore[method-assign]
    Delivery.send_now = send_now  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        Delivery.send = original  # type: ignore[method-assign]
        Delivery.send_now = original_now  # type: ignore[method-assign]
