"""The GraphQL object of each live event, made once, and the results shared on it.

A live event reaches every subscription of its task as the same `Event` object (the hub
validates it once; a backlog read at once by several subscriptions is shared too, see
`EventHub.shared`). Its GraphQL object is made once here, so that the executions on it
can be shared (`api.fanout.executor`), keyed by the object's identity.
"""

from __future__ import annotations

from typing import Any

from api.types.events import TaskEvent, event_type
from taskrunner.events import Event
from taskrunner.hub import EventHub

SHARED_EVENTS = 1024  # live events whose GraphQL object and results are kept for sharing


class SharedEvents:
    """The GraphQL object of each recent live event and the results executed on it, by
    object identity (an entry holds its key objects, so their ids cannot be reused while it
    lives); the oldest entries are dropped first."""

    def __init__(self, size: int = SHARED_EVENTS) -> None:
        self.size = size
        self._objects: dict[int, tuple[Event, TaskEvent]] = {}
        self._results: dict[int, tuple[TaskEvent, dict[Any, Any]]] = {}

    def get(self, event: Event) -> TaskEvent | None:
        entry = self._objects.get(id(event))
        return entry[1] if entry is not None and entry[0] is event else None

    def event(self, event: Event) -> TaskEvent:
        typed = self.get(event)
        if typed is not None:
            return typed
        typed = event_type(event)
        self._objects[id(event)] = (event, typed)
        self._results[id(typed)] = (typed, {})
        while len(self._objects) > self.size:
            _, oldest = self._objects.pop(next(iter(self._objects)))
            self._results.pop(id(oldest), None)
        return typed

    def entries(self) -> list[tuple[TaskEvent, dict[Any, Any]]]:
        """Each kept live event's object and the results shared on it, oldest first."""
        return list(self._results.values())

    def results(self, payload: object) -> dict[Any, Any] | None:
        """The results shared on `payload`, when it is the object of a live event."""
        entry = self._results.get(id(payload))
        return entry[1] if entry is not None and entry[0] is payload else None


shared_events = SharedEvents()


def typed_event(event: Event, hub: EventHub) -> TaskEvent:
    """The GraphQL object of `event`: one object per live event several subscriptions got
    (`hub.shared`), so that their executions on it are shared; a new one otherwise."""
    return shared_events.get(event) or (
        shared_events.event(event) if hub.shared(event) else event_type(event)
    )
