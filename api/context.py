"""The GraphQL context: the process's services plus who is asking."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from arq import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.types import Info as StrawberryInfo

from api.auth import HOW_TO, Authenticator, SubscriptionLeases
from taskrunner import metrics
from taskrunner.artifacts.signing import Signer
from taskrunner.artifacts.storage import ArtifactStore
from taskrunner.config import Settings
from taskrunner.errors import LimitExceeded, Unauthenticated
from taskrunner.hub import EventHub
from taskrunner.keys import Principal
from taskrunner.ratelimit import RateLimiter


@dataclass
class Services:
    """Built once in the app's lifespan, shared by every request."""

    settings: Settings
    engine: AsyncEngine
    redis: ArqRedis
    hub: EventHub
    store: ArtifactStore
    signer: Signer
    authenticator: Authenticator
    rate_limiter: RateLimiter
    leases: SubscriptionLeases


@dataclass
class Context:
    """One per HTTP request, or per websocket connection (shared by its subscriptions)."""

    services: Services
    principal: Principal | None = None  # None: a websocket before its connection_init
    base_url: str = ""  # e.g. "http://127.0.0.1:8000", for links the api serves
    response: Response | None = None  # HTTP only: for status and headers (Retry-After)
    websocket: WebSocket | None = None
    connection_params: dict[str, object] | None = None  # websocket connection_init payload
    open_subscriptions: int = 0

    @property
    def caller(self) -> Principal:
        if self.principal is None:
            raise Unauthenticated(f"no API key: {HOW_TO}")
        return self.principal

    @property
    def owner(self) -> str:
        """The owner of what the caller creates."""
        return self.caller.owner

    @property
    def scope(self) -> str | None:
        """The owner whose tasks the caller may see; None (admin): every owner."""
        return self.caller.scope

    @contextlib.asynccontextmanager
    async def subscription_slot(self) -> AsyncIterator[None]:
        """Hold one of the connection's MAX_SUBSCRIPTIONS_PER_CONNECTION slots and one of
        the key's MAX_SUBSCRIPTIONS_PER_KEY (every connection, SSE and replica)."""
        limit = self.settings.max_subscriptions_per_connection
        if self.open_subscriptions >= limit:
            raise LimitExceeded(
                f"this connection already has {limit} open subscriptions "
                "(MAX_SUBSCRIPTIONS_PER_CONNECTION); complete one, or open another connection"
            )
        self.open_subscriptions += 1  # before the lease's round trip: it counts at once
        metrics.SUBSCRIPTIONS.inc()
        try:
            async with self.services.leases.hold(self.caller):
                yield
        finally:
            self.open_subscriptions -= 1
            metrics.SUBSCRIPTIONS.dec()

    @property
    def settings(self) -> Settings:
        return self.services.settings


Info = StrawberryInfo[Context, None]
