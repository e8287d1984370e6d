"""The GraphQL type of who made a change (taskrunner.actors)."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

import strawberry


@strawberry.enum(description="What made a change: an API key's caller, or the service itself.")
class ActorKind(StrEnum):
    API_KEY = "API_KEY"
    SYSTEM = "SYSTEM"


@strawberry.type(
    description="Who made a change: an API key (its name and owner), or a part of the "
    "service (SYSTEM): `worker` (a run's start and end), `retry` (queued again after a "
    "failed attempt), `reconciler` (a lost worker's task), `schedule` (a tick's task), "
    "`deadline`, `workflow` (a step made ready, cancelled or refused by its workflow), "
    "`task` (a subtask a running task submitted)."
)
class Actor:
    kind: ActorKind
    name: str = strawberry.field(description="The key's name; for SYSTEM, the part.")
    owner: str | None = strawberry.field(description="The key's owner; null for SYSTEM.")

    @classmethod
    def of(cls, actor: Mapping[str, str] | None) -> Actor | None:
        if not actor:
            return None
        if "system" in actor:
            return cls(kind=ActorKind.SYSTEM, name=actor["system"], owner=None)
        return cls(kind=ActorKind.API_KEY, name=actor.get("key", ""), owner=actor.get("owner"))
