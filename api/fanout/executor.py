"""`SharedEventExecutor`: strawberry's executor, sharing a subscription's execution on a
live event with every subscription of the same shape.

The selection set is executed on a live event's object (`api.fanout.events`) once per
shape: subscriptions with the same operation (document), variables, caller and base URL
take the same result. Anything else (another document, other variables, another API key
or owner, a backlog event read by one subscription) executes on its own.

graphql-core asks the operation's executor for a per-event executor
(`build_per_event_executor`) and calls its `execute_operation`; a shared entry
(`Executed`, `Executing`) answers that call with the shared result.
"""

from __future__ import annotations

import asyncio
import inspect
import weakref
from collections.abc import Callable
from typing import Any

import orjson
from graphql import ExecutionResult as GraphQLExecutionResult
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from api.context import Context
from api.fanout.delivery import current
from api.fanout.events import shared_events


def share_key(executor: StrawberryGraphQLCoreExecutionContext) -> tuple[Any, ...] | None:
    """What a subscription's result on an event depends on besides the event: operation,
    variables, caller and base URL. None: never share (a resolver middleware, or variables
    that do not serialize)."""
    context = executor.context_value
    manager = executor.middleware_manager
    if (
        not isinstance(context, Context)
        or context.principal is None
        or (manager is not None and manager.middlewares)
        or executor.operation_extensions
    ):
        return None
    try:
        variables = orjson.dumps(executor.variable_values.coerced, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return None
    principal = context.principal
    return (
        id(executor.operation),  # the entry holds the operation: see Executed
        variables,
        principal.key_id,
        principal.owner,
        principal.admin,
        context.base_url,
    )


class ShareKey:
    """One object per distinct `share_key` while any executor or result uses it: shared
    results are looked up by identity, without hashing the key (its UUID hashes in
    Python) once per subscriber and event."""

    __slots__ = ("__weakref__", "value")

    def __init__(self, value: tuple[Any, ...]) -> None:
        self.value = value


_share_keys: weakref.WeakValueDictionary[tuple[Any, ...], ShareKey] = weakref.WeakValueDictionary()


def interned(share: tuple[Any, ...] | None) -> ShareKey | None:
    if share is None:
        return None
    key = _share_keys.get(share)
    if key is None:
        key = _share_keys[share] = ShareKey(share)
    return key


class Executed:
    """A subscription's selection set executed on one live event; the per-event "executor"
    of every subscription with the same `share_key` (graphql-core asks it for the result)."""

    __slots__ = ("encoded", "operation", "result")

    def __init__(self, operation: object, result: GraphQLExecutionResult) -> None:
        self.operation, self.result = operation, result  # holding operation: see share_key
        # (view, payload): api.fanout.direct.encoded
        self.encoded: tuple[object, str | None] | None = None

    def execute_operation(self, serially: bool | None = None) -> GraphQLExecutionResult:
        return self.result  # read-only downstream: strawberry copies it into its own result


class Executing:
    """Like `Executed` while an async resolver (e.g. `Artifact.url`) still runs: the others
    await it; if it fails, each executes on its own."""

    __slots__ = ("encoded", "fallback", "future", "operation")

    def __init__(
        self,
        operation: object,
        future: asyncio.Future[GraphQLExecutionResult],
        fallback: Callable[[], Any],
    ) -> None:
        self.operation, self.future, self.fallback = operation, future, fallback
        # (view, payload): api.fanout.direct.encoded
        self.encoded: tuple[object, str | None] | None = None

    async def shared_result(self) -> GraphQLExecutionResult | None:
        """The shared result, or None if its execution failed."""
        try:
            return await asyncio.shield(self.future)
        except Exception:
            return None

    async def execute_operation(self, serially: bool | None = None) -> GraphQLExecutionResult:
        try:
            return await asyncio.shield(self.future)  # one leaving cancels no other
        except Exception:
            outcome = self.fallback().execute_operation(serially)
            result: GraphQLExecutionResult = (
                await outcome if inspect.isawaitable(outcome) else outcome
            )
            return result


_UNKNOWN: Any = object()


class SharedEventExecutor(StrawberryGraphQLCoreExecutionContext):
    """strawberry's executor; a subscription's per-event executions on live events are
    shared (see the module's docstring). It registers as its operation's `Delivery`
    executor, when the operation has one."""

    _share: ShareKey | None = _UNKNOWN

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        delivery = current()
        if delivery is not None and delivery.executor is None:
            delivery.executor = self  # the operation's (per-event executors come later)

    def build_per_event_executor(self, payload: Any) -> Any:
        entry = self.shared_entry(payload)
        return entry if entry is not None else super().build_per_event_executor(payload)

    def shared_entry(self, payload: Any) -> Executed | Executing | None:
        """The shared execution of the selection set on `payload`, a live event's object;
        None when it is not one, or this subscription's results are not shared."""
        results = shared_events.results(payload)
        if results is None:
            return None
        share = self._share
        if share is _UNKNOWN:
            share = self._share = interned(share_key(self))
        if share is None:
            return None
        entry: Executed | Executing | None = results.get(share)
        if entry is None or entry.operation is not self.operation:
            entry = results[share] = self._execute(payload)
        return entry

    def _execute(self, payload: Any) -> Executed | Executing:
        def own() -> Any:
            return super(SharedEventExecutor, self).build_per_event_executor(payload)

        outcome = own().execute_operation(False)  # as graphql-core's execute_subscription_event
        if self.is_awaitable(outcome):
            return Executing(self.operation, asyncio.ensure_future(outcome), own)
        return Executed(self.operation, outcome)
