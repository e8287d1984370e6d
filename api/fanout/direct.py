"""`Direct`: what a subscription resolver sends past strawberry's per-result pipeline.

Over graphql-transport-ws with the engine's handler (`api.fanout.handlers`), a live
event's shared, error-free result (`api.fanout.executor`) is encoded once and written to
each subscriber's socket through its operation's `Delivery`: from the hub's dispatch
(`Direct.deliver`) while the subscription waits for live events, else from the
subscription's task (`Direct.payload`, then `Direct.send`). Everything else goes through
strawberry.

A resolver uses it as:

    direct = Direct.of(info)
    async for event in streams.task_events(..., deliver=direct.deliver if direct else None):
        typed = typed_event(event, hub)
        if direct is not None:
            payload = direct.payload(typed)
            if payload is not None and await direct.send(payload):
                continue
        yield typed
"""

from __future__ import annotations

from graphql import ExecutionResult as GraphQLExecutionResult

from api.context import Info
from api.fanout.delivery import Delivery, current
from api.fanout.events import shared_events
from api.fanout.executor import Executed, Executing, SharedEventExecutor
from api.types.events import TaskEvent
from taskrunner.events import Event
from taskrunner.hub import EventHub


def encoded(
    entry: Executed | Executing, result: GraphQLExecutionResult, delivery: Delivery
) -> str | None:
    """The `next` payload of a shared result, encoded once per entry (and view); None when
    it has errors (those go through strawberry, which classifies them)."""
    if result.errors:
        return None
    cached = entry.encoded
    if cached is None or cached[0] is not delivery.view:
        cached = entry.encoded = (delivery.view, delivery.payload(result.data))
    return cached[1]


class Direct:
    """A subscription's direct delivery: which live events' results may go past
    strawberry's per-result pipeline, and their encoded payloads."""

    __slots__ = ("delivery", "executor", "hub", "operation", "runner")

    def __init__(self, delivery: Delivery, executor: SharedEventExecutor, hub: EventHub) -> None:
        self.delivery, self.executor, self.hub = delivery, executor, hub
        self.operation, self.runner = delivery.operation, delivery.runner

    @classmethod
    def of(cls, info: Info) -> Direct | None:
        """The subscription's direct delivery, when it has one it may use."""
        delivery = current()
        if delivery is None or not delivery.usable:
            return None
        executor = delivery.executor
        if (
            not isinstance(executor, SharedEventExecutor)
            or executor.context_value is not info.context
            or executor.operation is not info.operation
        ):
            return None
        return cls(delivery, executor, info.context.services.hub)

    def payload(self, typed: TaskEvent) -> str | Executing | None:
        """The encoded `next` payload of `typed` when it is a live event's shared,
        error-free result and the operation goes on (`Executing`: its result is awaited
        first); None: it goes through strawberry."""
        if self.operation.completed or self.runner.execution_context.extensions_results:
            return None
        entry = self.executor.shared_entry(typed)
        if entry is None:
            return None
        if isinstance(entry, Executed):
            return encoded(entry, entry.result, self.delivery)
        return entry

    def deliver(self, event: Event) -> bool:
        """Send a live event now, from the hub (see `streams.task_events`), when it is a
        shared, error-free result the socket takes at once; False: the stream yields it."""
        typed = shared_events.get(event)
        if typed is None:
            if not self.hub.shared(event):
                return False  # not a live event several subscriptions got
            typed = shared_events.event(event)
        payload = self.payload(typed)
        return isinstance(payload, str) and self.delivery.send_now(payload)

    async def send(self, payload: str | Executing) -> bool:
        """Send what `payload` answered from the subscription's task (an `Executing`
        entry's result once it is there); False when that execution failed: the resolver
        yields the event (strawberry sends it)."""
        if isinstance(payload, Executing):
            result = await payload.shared_result()
            if result is None:
                return False
            text = encoded(payload, result, self.delivery)
            if text is None:
                return False
            payload = text
        await self.delivery.send(payload)
        return True
