"""The GraphQL context: the process's services plus who is asking."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from arq import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine
from strawberry.types import Info as StrawberryInfo

from taskrunner.artifacts import ArtifactStore, Signer
from taskrunner.config import Settings
from taskrunner.errors import LimitExceeded
from taskrunner.hub import EventHub


@dataclass
class Services:
    """Built once in the app's lifespan, shared by every request."""

    settings: Settings
    engine: AsyncEngine
    redis: ArqRedis
    hub: EventHub
    store: ArtifactStore
    signer: Signer


@dataclass
class Context:
    """One per HTTP request, or per websocket connection (shared by its subscriptions)."""

    services: Services
    owner: str = ""  # the caller; one shared owner until API keys exist
    base_url: str = ""  # e.g. "http://127.0.0.1:8000", for links the api serves
    open_subscriptions: int = 0

    @contextlib.contextmanager
    def subscription_slot(self) -> Iterator[None]:
        """Hold one of the connection's MAX_SUBSCRIPTIONS_PER_CONNECTION slots."""
        limit = self.settings.max_subscriptions_per_connection
        if self.open_subscriptions >= limit:
            raise LimitExceeded(
                f"this connection already has {limit} open subscriptions "
                "(MAX_SUBSCRIPTIONS_PER_CONNECTION); complete one, or open another connection"
            )
        self.open_subscriptions += 1
        try:
            yield
        finally:
            self.open_subscriptions -= 1

    @property
    def settings(self) -> Settings:
        return self.services.settings


Info = StrawberryInfo[Context, None]
