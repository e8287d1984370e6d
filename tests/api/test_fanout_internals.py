"""The strawberry-graphql, graphql-core, uvicorn and websockets internals the fan-out
engine (api.fanout) subclasses or calls are still there, with the shape it expects: an
upgrade that changes one fails here, naming it (one test id per internal), before the
engine misbehaves. api/fanout/README.md says what each is for and what breaks; every
internal checked here is named there."""

from __future__ import annotations

import ast
import importlib
import inspect
import textwrap
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import pytest
import strawberry
from graphql import ExecutionResult as GraphQLExecutionResult
from strawberry.extensions import SchemaExtension
from strawberry.extensions.context import StreamResultContextManager
from strawberry.extensions.runner import SchemaExtensionsRunner
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import Operation
from strawberry.types import ExecutionResult
from strawberry.types.execution import ExecutionContext
from uvicorn import Config

from api.app import uvicorn_options
from api.fanout.websocket import CoalescingWebSocketsProtocol
from taskrunner.config import load_settings
from tests.support.environment import repo_root
from tests.support.parsing import parse

README = repo_root() / "api" / "fanout" / "README.md"

TRANSPORT_WS = "strawberry.subscriptions.protocols.graphql_transport_ws.handlers"
GRAPHQL_WS = "strawberry.subscriptions.protocols.graphql_ws.handlers"
SANSIO = "uvicorn.protocols.websockets.websockets_sansio_impl"


def changed(package: str, internal: str, expected: object, found: object) -> str:
    return (
        f"{package} internal {internal} changed: expected {expected}, found {found}; "
        "see api/fanout/README.md"
    )


@dataclass(frozen=True)
class Member:
    """A class, function or method the engine uses, by its path in `module`; `params`:
    its parameter names (all of them, or, with `some`, at least those), `is_async`:
    whether it is a coroutine function (None: not checked)."""

    package: str
    module: str
    path: str
    params: tuple[str, ...] | None = None
    is_async: bool | None = None
    some: bool = False


MEMBERS = [
    Member(
        "strawberry-graphql", "strawberry.schema.schema", "StrawberryGraphQLCoreExecutionContext"
    ),
    Member(
        "strawberry-graphql",
        "strawberry.schema.schema",
        "StrawberryGraphQLCoreExecutionContext.__init__",
        ("self", "args", "kwargs"),
        False,
    ),
    Member(
        "strawberry-graphql",
        "strawberry.schema.schema",
        "StrawberryGraphQLCoreExecutionContext.build_per_event_executor",
        ("self", "payload"),
        False,
    ),
    Member(
        "strawberry-graphql",
        "strawberry.schema.schema",
        "StrawberryGraphQLCoreExecutionContext.execute_operation",
        ("self", "serially"),
        False,
    ),
    Member(
        "strawberry-graphql",
        "strawberry.schema.schema",
        "Schema.__init__",
        ("execution_context_class",),
        False,
        some=True,
    ),
    Member(
        "strawberry-graphql",
        "strawberry.schema.schema",
        "Schema.create_extensions_runner",
        ("self", "execution_context", "extensions"),
        False,
    ),
    Member(
        "strawberry-graphql",
        "strawberry.extensions.runner",
        "SchemaExtensionsRunner.__init__",
        ("self", "execution_context", "extensions"),
        False,
    ),
    Member(
        "strawberry-graphql",
        "strawberry.extensions.runner",
        "SchemaExtensionsRunner.on_stream_result",
        ("self", "result"),
        False,
    ),
    Member(
        "strawberry-graphql",
        "strawberry.extensions.runner",
        "SchemaExtensionsRunner.get_extensions_results",
        ("self", "ctx"),
        True,
    ),
    Member(
        "strawberry-graphql",
        "strawberry.extensions.context",
        "StreamResultContextManager.__aenter__",
        is_async=True,
    ),
    Member(
        "strawberry-graphql",
        "strawberry.extensions.context",
        "StreamResultContextManager.__aexit__",
        is_async=True,
    ),
    Member("strawberry-graphql", "strawberry.extensions", "SchemaExtension.get_results", ("self",)),
    Member(
        "strawberry-graphql",
        "strawberry.extensions",
        "SchemaExtension.on_stream_result",
        ("self", "result"),
    ),
    Member("strawberry-graphql", "strawberry.utils.await_maybe", "await_maybe", ("value",), True),
    Member(
        "strawberry-graphql",
        TRANSPORT_WS,
        "BaseGraphQLTransportWSHandler.run_operation",
        ("self", "operation"),
        True,
    ),
    Member(
        "strawberry-graphql",
        TRANSPORT_WS,
        "BaseGraphQLTransportWSHandler._send_result_stream",
        ("self", "operation", "result_source"),
        True,
    ),
    Member(
        "strawberry-graphql",
        TRANSPORT_WS,
        "Operation.send_next",
        ("self", "execution_result"),
        True,
    ),
    Member("strawberry-graphql", "strawberry.http.exceptions", "WebSocketDisconnected"),
    Member("strawberry-graphql", GRAPHQL_WS, "BaseGraphQLWSHandler.handle", ("self",), True),
    Member(
        "strawberry-graphql",
        GRAPHQL_WS,
        "BaseGraphQLWSHandler.handle_connection_init",
        ("self", "message"),
        True,
    ),
    Member(
        "strawberry-graphql",
        GRAPHQL_WS,
        "BaseGraphQLWSHandler.send_data_message",
        ("self", "execution_result", "operation_id"),
        True,
    ),
    Member(
        "strawberry-graphql",
        "strawberry.subscriptions.protocols.graphql_ws.types",
        "ConnectionInitMessage",
    ),
    Member("strawberry-graphql", "strawberry.asgi", "GraphQL.encode_json", ("self", "data"), False),
    Member(
        "graphql-core",
        "graphql.execution.execute",
        "map_source_to_response_event",
        ("executor", "source_event_stream"),
        some=True,
    ),
    Member("uvicorn", SANSIO, "WebSocketsSansIOProtocol.run_asgi", ("self",), True),
    Member("uvicorn", SANSIO, "WebSocketsSansIOProtocol.send", ("self", "message"), True),
    Member(
        "uvicorn",
        SANSIO,
        "WebSocketsSansIOProtocol.connection_made",
        ("self", "transport"),
        False,
    ),
    Member("uvicorn", SANSIO, "WebSocketsSansIOProtocol.connection_lost", ("self", "exc"), False),
    Member("websockets", "websockets.protocol", "State.OPEN"),
]


@dataclass(frozen=True)
class Attribute:
    """An attribute the engine reads or writes on instances (or the class) of `owner`."""

    package: str
    module: str
    owner: str
    name: str

    @property
    def path(self) -> str:
        return f"{self.owner}.{self.name}"


def _attributes(package: str, module: str, owner: str, *names: str) -> list[Attribute]:
    return [Attribute(package, module, owner, name) for name in names]


ATTRIBUTES = [
    *_attributes(
        "strawberry-graphql",
        "strawberry.schema.schema",
        "StrawberryGraphQLCoreExecutionContext",
        "context_value",
        "operation",
        "variable_values",
        "middleware_manager",
        "operation_extensions",
        "is_awaitable",
    ),
    *_attributes("graphql-core", "graphql.execution.values", "VariableValues", "coerced"),
    *_attributes("graphql-core", "graphql", "MiddlewareManager", "middlewares"),
    *_attributes(
        "strawberry-graphql",
        "strawberry.extensions.runner",
        "SchemaExtensionsRunner",
        "extensions",
        "execution_context",
    ),
    *_attributes(
        "strawberry-graphql", "strawberry.extensions.context", "StreamResultContextManager", "hooks"
    ),
    *_attributes(
        "strawberry-graphql", "strawberry.types.execution", "ExecutionContext", "extensions_results"
    ),
    *_attributes(
        "strawberry-graphql",
        TRANSPORT_WS,
        "BaseGraphQLTransportWSHandler",
        "view",
        "websocket",
        "operations",
    ),
    *_attributes("strawberry-graphql", TRANSPORT_WS, "Operation", "id", "completed"),
    *_attributes("strawberry-graphql", "strawberry.asgi", "ASGIWebSocketAdapter", "ws"),
    *_attributes("strawberry-graphql", GRAPHQL_WS, "BaseGraphQLWSHandler", "view", "websocket"),
    *_attributes(
        "strawberry-graphql",
        "strawberry.asgi",
        "GraphQL",
        "graphql_transport_ws_handler_class",
        "graphql_ws_handler_class",
        "connection_init_wait_timeout",
    ),
    *_attributes(
        "uvicorn",
        SANSIO,
        "WebSocketsSansIOProtocol",
        "scope",
        "conn",
        "handshake_complete",
        "close_sent",
        "disconnected",
        "initial_response",
        "writable",
        "transport",
        "loop",
    ),
    *_attributes(
        "websockets",
        "websockets.server",
        "ServerProtocol",
        "state",
        "expect_continuation_frame",
        "extensions",
        "debug",
    ),
]


def _resolve(module: str, path: str) -> tuple[Any, str | None]:
    """The object at `path` in `module`, or None and the first name that is missing."""
    found: Any = importlib.import_module(module)
    for name in path.split("."):
        if not hasattr(found, name):
            return None, name
        found = getattr(found, name)
    return found, None


def _assigned(cls: type) -> set[str]:
    """The attribute names `cls` or a base of it in the same library defines: class
    attributes, slots, dataclass and named-tuple fields, and `self.x = ...` in methods."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass.__module__ in ("builtins", "typing", "abc"):
            continue
        names.update(vars(klass))
        slots = vars(klass).get("__slots__", ())
        names.update((slots,) if isinstance(slots, str) else slots)
        names.update(getattr(klass, "__dataclass_fields__", {}))
        names.update(getattr(klass, "_fields", ()))
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        for node in ast.walk(parse(source)):
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AnnAssign | ast.AugAssign):
                targets = [node.target]
            else:
                continue
            for target in targets:
                if (
                    isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Name)
                    and target.value.id == "self"
                ):
                    names.add(target.attr)
    return names


@pytest.mark.parametrize("member", MEMBERS, ids=[f"{m.module}.{m.path}" for m in MEMBERS])
def test_a_member_the_engine_uses_keeps_its_shape(member: Member) -> None:
    found, missing = _resolve(member.module, member.path)
    internal = f"{member.module}.{member.path}"
    assert missing is None, changed(member.package, internal, "it to exist", f"no {missing!r}")
    if member.params is not None:
        params = tuple(inspect.signature(found).parameters)
        fits = set(member.params) <= set(params) if member.some else params == member.params
        expected = f"parameters {'including ' if member.some else ''}{member.params}"
        assert fits, changed(member.package, internal, expected, f"parameters {params}")
    if member.is_async is not None:
        is_async = inspect.iscoroutinefunction(found)
        assert is_async == member.is_async, changed(
            member.package,
            internal,
            "a coroutine function" if member.is_async else "a plain function",
            "a coroutine function" if is_async else "a plain function",
        )


@pytest.mark.parametrize("attribute", ATTRIBUTES, ids=[f"{a.module}.{a.path}" for a in ATTRIBUTES])
def test_an_attribute_the_engine_uses_is_still_set(attribute: Attribute) -> None:
    owner, missing = _resolve(attribute.module, attribute.owner)
    internal = f"{attribute.module}.{attribute.path}"
    assert missing is None, changed(attribute.package, internal, "its class", f"no {missing!r}")
    assert attribute.name in _assigned(owner), changed(
        attribute.package,
        internal,
        f"{attribute.owner} to set {attribute.name!r}",
        "no such attribute in the class or its bases",
    )


# --- how strawberry and uvicorn call what the engine overrides ------------------------------


@strawberry.type
class _Query:
    hello: str = "hi"


@strawberry.type
class _Subscription:
    @strawberry.subscription
    async def count(self) -> AsyncGenerator[int, None]:
        for i in range(3):
            yield i


async def test_graphql_core_asks_the_executor_for_each_events_executor() -> None:
    """build_per_event_executor(payload) per event, then execute_operation(False) on what
    it answered, whose result is the event's (SharedEventExecutor answers shared ones)."""
    calls: list[object] = []

    class Answer:
        def __init__(self, payload: int) -> None:
            self.payload = payload

        def execute_operation(self, serially: bool | None = None) -> GraphQLExecutionResult:
            calls.append(("execute_operation", serially))
            return GraphQLExecutionResult(data={"count": self.payload * 10})

    class Recording(StrawberryGraphQLCoreExecutionContext):
        def build_per_event_executor(self, payload: Any) -> Any:
            calls.append(("build_per_event_executor", payload))
            return Answer(payload)

    schema = strawberry.Schema(
        query=_Query, subscription=_Subscription, execution_context_class=Recording
    )
    data = [r.data async for r in await schema.subscribe("subscription { count }")]
    expected_calls = [
        call
        for n in range(3)
        for call in (("build_per_event_executor", n), ("execute_operation", False))
    ]
    internal = "StrawberryGraphQLCoreExecutionContext.build_per_event_executor (as called)"
    assert calls == expected_calls, changed("graphql-core", internal, expected_calls, calls)
    expected = [{"count": 0}, {"count": 10}, {"count": 20}]
    assert data == expected, changed("graphql-core", internal, expected, data)


async def test_strawberry_runs_the_schemas_extensions_runner_for_each_result() -> None:
    """Schema.create_extensions_runner once per operation; the runner's
    get_extensions_results and on_stream_result once per subscription result."""
    calls: list[str] = []

    class Runner(SchemaExtensionsRunner):
        def on_stream_result(self, result: Any) -> StreamResultContextManager:
            calls.append("on_stream_result")
            return super().on_stream_result(result)

        async def get_extensions_results(self, ctx: ExecutionContext) -> dict[str, Any]:
            calls.append("get_extensions_results")
            return await super().get_extensions_results(ctx)

    class Schema(strawberry.Schema):
        def create_extensions_runner(
            self, execution_context: ExecutionContext, extensions: list[SchemaExtension]
        ) -> SchemaExtensionsRunner:
            calls.append("create_extensions_runner")
            return Runner(execution_context, extensions)

    schema = Schema(query=_Query, subscription=_Subscription)
    results = [r async for r in await schema.subscribe("subscription { count }")]
    counts = {name: calls.count(name) for name in dict.fromkeys(calls)}
    expected = {"create_extensions_runner": 1, "get_extensions_results": 3, "on_stream_result": 3}
    assert len(results) == 3
    assert counts == expected, changed(
        "strawberry-graphql", "Schema.create_extensions_runner (as called)", expected, counts
    )


async def test_strawberrys_next_message_is_the_one_delivery_builds() -> None:
    """Delivery writes `{"id":...,"type":"next","payload":{"data":...}}` itself."""
    sent: list[dict[str, Any]] = []

    class Handler:
        async def send_message(self, message: dict[str, Any]) -> None:
            sent.append(message)

        def forget_id(self, id: str) -> None:
            pass

    operation = Operation(Handler(), "7", "subscription { count }", None, None)  # type: ignore[arg-type]
    await operation.send_next(ExecutionResult(data={"count": 1}, errors=None))
    expected = [{"id": "7", "type": "next", "payload": {"data": {"count": 1}}}]
    found = [(list(m), m) for m in sent]
    internal = "Operation.send_next (the message)"
    assert sent == expected and list(sent[0]) == ["id", "type", "payload"], changed(
        "strawberry-graphql", internal, expected, found
    )


def test_uvicorn_loads_the_websocket_protocol_from_the_apis_options() -> None:
    options = uvicorn_options(load_settings(_env_file=None))
    config = Config(app=lambda scope, receive, send: None, **options)
    config.load()
    found = getattr(config, "ws_protocol_class", None)
    assert found is CoalescingWebSocketsProtocol, changed(
        "uvicorn", "Config(ws=...)", CoalescingWebSocketsProtocol, found
    )


def test_uvicorns_scope_has_extensions_before_the_app_runs() -> None:
    """CoalescingWebSocketsProtocol.run_asgi adds SEND_TEXT_NOW to scope["extensions"],
    which uvicorn builds in the scope it makes for a connection."""
    module = importlib.import_module(SANSIO)
    source = textwrap.dedent(inspect.getsource(module.WebSocketsSansIOProtocol))
    keys = [
        key.value
        for node in ast.walk(parse(source))
        if isinstance(node, ast.AnnAssign | ast.Assign)
        and any(
            isinstance(t, ast.Attribute) and t.attr == "scope"
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        )
        and isinstance(node.value, ast.Dict)
        for key in node.value.keys
        if isinstance(key, ast.Constant)
    ]
    assert "extensions" in keys, changed(
        "uvicorn", "WebSocketsSansIOProtocol.scope", "a scope with 'extensions'", keys
    )


# --- the README names every internal checked here ------------------------------------------

NAMED = [(m.path.rpartition(".")[0], m.path.rpartition(".")[2]) for m in MEMBERS] + [
    (a.owner, a.name) for a in ATTRIBUTES
]


@pytest.mark.parametrize(("owner", "name"), NAMED, ids=[f"{o}.{n}" if o else n for o, n in NAMED])
def test_the_readme_names_the_internal(owner: str, name: str) -> None:
    lines = README.read_text().splitlines()
    assert any(
        (not owner or owner in line) and f"{'.' if owner else ''}{name}" in line for line in lines
    ), (
        f"api/fanout/README.md does not name {owner + '.' if owner else ''}{name}, "
        "an internal tests/api/test_fanout_internals.py checks: add it to the README's list"
    )
