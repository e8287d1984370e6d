"""Limits at the edge: GraphQL query depth, aliases and tokens; request body size.

Each refusal says which limit was hit and how to stay under it; nothing past the limit is
parsed, validated or executed.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

from graphql import ASTValidationRule, GraphQLError, StringValueNode
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.extensions import MaxAliasesLimiter, QueryDepthLimiter, SchemaExtension

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


def _nul_in(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_nul_in(k) or _nul_in(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_nul_in(v) for v in value)
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
    """MAX_QUERY_DEPTH, MAX_QUERY_ALIASES and MAX_QUERY_TOKENS of the serving app, and no
    NUL characters in strings (literals here, variables in `on_execute`)."""

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
