"""Limits at the edge: GraphQL query depth, aliases, tokens and cost; request body size.

Each refusal says which limit was hit and how to stay under it; nothing past the limit is
parsed, validated or executed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar

from graphql import (
    SKIP,
    ASTValidationRule,
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLList,
    GraphQLNamedType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    NullValueNode,
    OperationDefinitionNode,
    SelectionNode,
    StringValueNode,
    Undefined,
    ValidationRule,
    ValueNode,
    VariableNode,
    get_named_type,
    get_nullable_type,
)
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.extensions import MaxAliasesLimiter, QueryDepthLimiter, SchemaExtension

from taskrunner import jsonx
from taskrunner.config import Settings
from taskrunner.errors import BadInput

LIMITED_PATHS = ("/graphql", "/graphql/stream")


@lru_cache(maxsize=16)
def _rules(max_depth: int, max_aliases: int) -> tuple[type[ASTValidationRule], ...]:
    """The validation rules for these limits (cached: the validation cache keys on them)."""
    return (
        *QueryDepthLimiter(max_depth=max_depth).validation_rules,
        *MaxAliasesLimiter(max_alias_count=max_aliases).validation_rules,
        NoNulStrings,
    )


# --- query cost ---------------------------------------------------------------------------
#
# The cost of an operation is how many fields it may resolve: every selected field counts 1
# for each item of each list it is read under. A list's items are its `first` (from a
# literal, a variable or a default), or MAX_PAGE_SIZE where that is null (`Task.events`
# reads one page then); a connection's `first` sizes its `edges`. A list without `first`
# counts UNPAGED_LIST_SIZE items. Fragments and inline fragments add their fields (every
# type condition's, a safe over-estimate); `__typename` and introspection count nothing:
# they are answered from memory, and graphql-core's MaxIntrospectionDepthRule bounds them.
#
# graphql-complexity (PyPI) was the nearest library, but it counts a missing `first` as 1
# instead of the argument's default, takes no variables through its entry point, fails on
# a variable without a default, and its strawberry extra pins strawberry < 0.292.

UNPAGED_LIST_SIZE = 10


def _int_or_none(value: Any) -> tuple[bool, int | None]:
    """(True, value) for what an Int variable may be coerced from; (False, None) else."""
    if value is None:
        return True, None
    if type(value) is int:
        return True, value
    if type(value) is float and value.is_integer():
        return True, int(value)
    return False, None


def _defaults(operation: OperationDefinitionNode) -> dict[str, ValueNode]:
    return {
        d.variable.name.value: d.default_value
        for d in operation.variable_definitions or ()
        if d.default_value is not None
    }


@dataclass
class _Frame:
    """One selection set being summed (the explicit stack keeps long fragment chains off
    Python's call stack)."""

    selections: tuple[SelectionNode, ...]
    parent: GraphQLNamedType | None
    page: int | None  # a connection's `first`, for its list fields (`edges`)
    factor: int = 1  # the parent adds factor x this set's cost (+ base)
    base: int = 0
    memo_key: tuple[str, int | None] | None = None  # a fragment's cost, kept once summed
    total: int = 0
    index: int = 0


@dataclass
class _Coster:
    schema: GraphQLSchema
    fragments: Mapping[str, FragmentDefinitionNode]
    variables: Mapping[str, Any]
    max_page_size: int
    memo: dict[tuple[str, int | None], int] = field(default_factory=dict)
    defaults: dict[str, ValueNode] = field(default_factory=dict)

    def cost(self, operation: OperationDefinitionNode) -> int:
        """The operation's cost."""
        self.defaults = _defaults(operation)
        self.memo.clear()  # fragments read the operation's variable defaults
        root = self.schema.get_root_type(operation.operation)
        stack = [_Frame(tuple(operation.selection_set.selections), root, None)]
        active: set[str] = set()  # fragments being summed: a cycle adds nothing
        while True:
            frame = stack[-1]
            if frame.index == len(frame.selections):
                stack.pop()
                if frame.memo_key is not None:
                    self.memo[frame.memo_key] = frame.total
                    active.discard(frame.memo_key[0])
                if not stack:
                    return frame.total
                stack[-1].total += frame.base + frame.factor * frame.total
                continue
            node = frame.selections[frame.index]
            frame.index += 1
            child = self._child(node, frame, active)
            if child is not None:
                stack.append(child)

    def _child(self, node: SelectionNode, frame: _Frame, active: set[str]) -> _Frame | None:
        """What `node` adds to `frame`: summed at once, or a selection set to sum first."""
        if isinstance(node, InlineFragmentNode):
            condition = node.type_condition
            parent = self.schema.get_type(condition.name.value) if condition else frame.parent
            return _Frame(tuple(node.selection_set.selections), parent, frame.page)
        if isinstance(node, FragmentSpreadNode):
            name = node.name.value
            fragment = self.fragments.get(name)
            key = (name, frame.page)
            if fragment is None or name in active:
                return None
            if key in self.memo:
                frame.total += self.memo[key]
                return None
            active.add(name)
            parent = self.schema.get_type(fragment.type_condition.name.value)
            selections = tuple(fragment.selection_set.selections)
            return _Frame(selections, parent, frame.page, memo_key=key)
        assert isinstance(node, FieldNode)
        name = node.name.value
        fields = getattr(frame.parent, "fields", None)
        definition = fields.get(name) if fields and not name.startswith("__") else None
        if definition is None:  # __typename, introspection, or unknown (refused elsewhere)
            return None
        own = self._first(node, definition.args.get("first"))
        if node.selection_set is None:
            frame.total += 1
            return None
        inner = get_named_type(definition.type)
        selections = tuple(node.selection_set.selections)
        if isinstance(get_nullable_type(definition.type), GraphQLList):
            size = own if own is not None else frame.page
            size = UNPAGED_LIST_SIZE if size is None else size
            return _Frame(selections, inner, None, factor=size, base=1)
        return _Frame(selections, inner, own, base=1)

    def _first(self, node: FieldNode, argument: Any) -> int | None:
        """The page size the field's `first` asks for, within [0, MAX_PAGE_SIZE]; None when
        it has no `first`."""
        if argument is None:
            return None
        given = next((a.value for a in node.arguments or () if a.name.value == "first"), None)
        value: Any = Undefined
        if isinstance(given, VariableNode):
            name = given.name.value
            value = self.variables.get(name, Undefined)
            if value is Undefined and name in self.defaults:
                given = self.defaults[name]
        if isinstance(given, IntValueNode):
            value = int(given.value)
        elif isinstance(given, NullValueNode):
            value = None
        elif given is not None and not isinstance(given, VariableNode):
            value = "not an Int"  # refused by validation; counted as a full page
        if value is Undefined:
            value = None if argument.default_value is Undefined else argument.default_value
        is_int, number = _int_or_none(value)
        if not is_int or number is None:
            return self.max_page_size
        return max(0, min(number, self.max_page_size))


def operation_costs(
    schema: GraphQLSchema,
    document: DocumentNode,
    variables: Mapping[str, Any] | None,
    max_page_size: int,
) -> dict[str | None, int]:
    """The cost of each operation of `document` (by name; None: an anonymous one)."""
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    coster = _Coster(schema, fragments, variables or {}, max_page_size)
    return {
        (d.name.value if d.name else None): coster.cost(d)
        for d in document.definitions
        if isinstance(d, OperationDefinitionNode)
    }


class QueryCost(ValidationRule):
    """Refuses an operation that costs more than MAX_QUERY_COST (see above). Made per
    limits and per variables that may be a `first` (`cost_rule`)."""

    max_cost: ClassVar[int]
    max_page_size: ClassVar[int]
    variables: ClassVar[Mapping[str, int | None]]

    def enter_operation_definition(self, node: OperationDefinitionNode, *_args: object) -> Any:
        fragments = {
            d.name.value: d
            for d in self.context.document.definitions
            if isinstance(d, FragmentDefinitionNode)
        }
        coster = _Coster(self.context.schema, fragments, self.variables, self.max_page_size)
        cost = coster.cost(node)
        if cost > self.max_cost:
            self.report_error(
                GraphQLError(
                    f"query cost {cost} is over MAX_QUERY_COST ({self.max_cost}): ask for "
                    "fewer items per page (first) or fewer fields",
                    node,
                    extensions={"code": "LIMIT_EXCEEDED"},
                )
            )
        return SKIP


def page_variables(variables: Mapping[str, Any] | None) -> tuple[tuple[str, int | None], ...]:
    """The variables that may be a `first` (Int or null), as a key: the validation cache
    keys on the rules, so a query's other variables must not make a new rule."""
    found = []
    for name, value in (variables or {}).items():
        is_int, number = _int_or_none(value)
        if is_int:
            found.append((name, number))
    return tuple(sorted(found))


@lru_cache(maxsize=256)
def cost_rule(
    max_cost: int, max_page_size: int, variables: tuple[tuple[str, int | None], ...]
) -> type[QueryCost]:
    """The QueryCost rule for these limits and page variables (cached: one class for the
    same ones, so that the validation cache finds the same rules)."""
    attributes = {
        "max_cost": max_cost,
        "max_page_size": max_page_size,
        "variables": dict(variables),
    }
    return type("QueryCost", (QueryCost,), attributes)


def _nul_in(value: object) -> bool:
    """Whether a string in `value` (variables: JSON values) holds U+0000. JSON writes one
    `\\u0000`: without that in the encoding of the whole (one C call), there is none, and
    only a `value` with it (or an escaped backslash before `u0000`) is walked."""
    return b"\\u0000" in jsonx.dumps(value) and _nul_walk(value)


def _nul_walk(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_nul_walk(k) or _nul_walk(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_nul_walk(v) for v in value)
    return False


class NoNulStrings(ASTValidationRule):
    """PostgreSQL cannot store U+0000 in text or JSONB: refuse it in any string literal."""

    def enter_string_value(self, node: StringValueNode, *_args: object) -> None:
        if "\x00" in node.value:
            self.report_error(GraphQLError(NUL_MESSAGE, node))


NUL_MESSAGE = (
    "a string contains the character U+0000 (NUL), which cannot be stored; remove it "
    "(binary data goes in artifacts, base64-encoded)"
)


class QueryLimits(SchemaExtension):
    """MAX_QUERY_DEPTH, MAX_QUERY_ALIASES, MAX_QUERY_TOKENS and MAX_QUERY_COST of the
    serving app, and no NUL characters in strings (literals here, variables in
    `on_execute`)."""

    def on_execute(self) -> Iterator[None]:
        for name, value in (self.execution_context.variables or {}).items():
            if _nul_in(value):
                raise BadInput(f"${name}: {NUL_MESSAGE}", field=name)
        yield

    def on_operation(self) -> Iterator[None]:
        settings: Settings | None = getattr(self.execution_context.context, "settings", None)
        if settings is None:  # executed outside the api (no context): no edge to guard
            yield
            return
        self.execution_context.parse_options["max_tokens"] = settings.max_query_tokens
        self.execution_context.validation_rules = (
            *self.execution_context.validation_rules,
            *_rules(settings.max_query_depth, settings.max_query_aliases),
            cost_rule(
                settings.max_query_cost,
                settings.max_page_size,
                page_variables(self.execution_context.variables),
            ),
        )
        yield


def too_large(limit: int) -> JSONResponse:
    message = (
        f"request body: over MAX_REQUEST_BYTES ({limit} bytes); send fewer tasks per "
        "submitTasks, and large files through createArtifactUpload"
    )
    body = {"errors": [{"message": message, "extensions": {"code": "LIMIT_EXCEEDED"}}]}
    return JSONResponse(body, status_code=413)


class BodyLimitMiddleware:
    """Refuses GraphQL HTTP bodies over `limit` bytes with 413, by Content-Length or, for a
    chunked body, as soon as the bytes read pass it (the body is held, at most `limit`)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in LIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await too_large(self.limit)(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await too_large(self.limit)(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
