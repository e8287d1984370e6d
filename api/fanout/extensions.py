"""`ExtensionsRunner`: strawberry's schema extensions runner without the per-result work no
extension asks for, and `FanoutSchema`, the strawberry Schema that uses it.

strawberry runs the runner's per-result hooks once per subscription event and
subscriber. Hooks are found as strawberry finds them (a method overriding
`SchemaExtension`'s); an extension with `on_stream_result` or `get_results` gets exactly
strawberry's treatment. The runner also tells a `Delivery` whether a result's payload is
just its data (`plain`): only then may it go past strawberry's pipeline.
"""

from __future__ import annotations

from typing import Any

import strawberry
from strawberry.extensions import SchemaExtension
from strawberry.extensions.context import StreamResultContextManager
from strawberry.extensions.runner import SchemaExtensionsRunner
from strawberry.types.execution import ExecutionContext
from strawberry.utils.await_maybe import await_maybe

from api.fanout.delivery import current


class _NoStreamResultHooks(StreamResultContextManager):
    """`on_stream_result` when no extension has that hook: nothing to enter or exit."""

    def __init__(self) -> None:
        self.hooks = []

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc_info: object) -> None:
        return None


_NO_STREAM_RESULT_HOOKS = _NoStreamResultHooks()


class ExtensionsRunner(SchemaExtensionsRunner):
    """strawberry's runner, skipping the per-result hooks no extension has; it registers
    as its operation's `Delivery` runner, when the operation has one."""

    def __init__(
        self, execution_context: ExecutionContext, extensions: list[SchemaExtension]
    ) -> None:
        super().__init__(execution_context=execution_context, extensions=extensions)
        delivery = current()
        if delivery is not None and delivery.runner is None:
            delivery.runner = self  # the operation's
        self._results_of = [
            e for e in self.extensions if type(e).get_results is not SchemaExtension.get_results
        ]
        self._stream_hooks = any(
            type(e).on_stream_result is not SchemaExtension.on_stream_result
            for e in self.extensions
        )

    @property
    def plain(self) -> bool:
        """Whether a result's payload is just its data and errors: no extension adds
        results or has a per-result hook (a `Delivery` needs that)."""
        return (
            not self._results_of
            and not self._stream_hooks
            and not self.execution_context.extensions_results
        )

    def on_stream_result(self, result: Any) -> StreamResultContextManager:
        if self._stream_hooks:
            return super().on_stream_result(result)
        return _NO_STREAM_RESULT_HOOKS

    async def get_extensions_results(self, ctx: ExecutionContext) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for extension in self._results_of:
            data.update(await await_maybe(extension.get_results()))
        data.update(ctx.extensions_results)
        return data


class FanoutSchema(strawberry.Schema):
    """strawberry's Schema with the engine's `ExtensionsRunner`. Give it
    `execution_context_class=SharedEventExecutor` (`api.fanout.executor`) to share
    per-event executions."""

    def create_extensions_runner(
        self, execution_context: ExecutionContext, extensions: list[SchemaExtension]
    ) -> SchemaExtensionsRunner:
        return ExtensionsRunner(execution_context, extensions)
