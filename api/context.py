"""The GraphQL context: the process's services plus who is asking."""

from __future__ import annotations

from dataclasses import dataclass

from arq import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine
from strawberry.types import Info as StrawberryInfo

from taskrunner.config import Settings
from taskrunner.hub import EventHub


@dataclass
class Services:
    """Built once in the app's lifespan, shared by every request."""

    settings: Settings
    engine: AsyncEngine
    redis: ArqRedis
    hub: EventHub


@dataclass
class Context:
    services: Services
    owner: str = ""  # the caller; one shared owner until API keys exist

    @property
    def settings(self) -> Settings:
        return self.services.settings


Info = StrawberryInfo[Context, None]
