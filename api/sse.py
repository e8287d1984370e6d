"""GraphQL subscriptions over Server-Sent Events, for clients that cannot open websockets.

    GET  /graphql/stream?query=...&variables={...}&operationName=...   (EventSource)
    POST /graphql/stream  {"query": ..., "variables": ..., "operationName": ...}

Each result is an event `next` whose data is the GraphQL result as JSON and whose `id` is
the event's cursor; the stream ends with an event `complete`. A reconnecting EventSource
sends `Last-Event-ID`: it becomes the `$after` variable unless the request set one, so a
page that subscribes with `after: $after` resumes without a gap and without extra code.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, TypeVar

import orjson
from graphql import GraphQLError
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.context import Context, Services
from api.errors import classify
from api.schema import build_schema
from taskrunner import jsonx

PING_SECONDS = 15
T = TypeVar("T")


def _error(message: str, status: int = 400) -> JSONResponse:
    body = {"errors": [{"message": message, "extensions": {"code": "BAD_INPUT"}}]}
    return JSONResponse(body, status_code=status)


async def _params(request: Request) -> dict[str, Any] | JSONResponse:
    if request.method == "POST":
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error('body: not JSON; send {"query": "subscription { ... }"}')
        if not isinstance(body, dict):
            return _error('body: send a JSON object {"query": ..., "variables": {...}}')
        return body
    params: dict[str, Any] = dict(request.query_params)
    if "variables" in params:
        try:
            params["variables"] = orjson.loads(params["variables"])
        except orjson.JSONDecodeError:
            return _error("variables: not JSON; pass a URL-encoded JSON object")
    return params


def _cursor(data: dict[str, Any] | None) -> str | None:
    for value in (data or {}).values():
        if isinstance(value, dict) and isinstance(value.get("cursor"), str):
            return str(value["cursor"])
    return None


def _formatted(errors: list[GraphQLError] | None) -> list[dict[str, Any]]:
    return [dict(classify(e).formatted) for e in errors or ()]


REVOKED = {"errors": [{"message": "API key revoked", "extensions": {"code": "UNAUTHENTICATED"}}]}


async def _until(source: AsyncIterator[T], stop: asyncio.Event) -> AsyncGenerator[T | None, None]:
    """`source`'s items until it ends, or None once when `stop` is set."""
    stopped = asyncio.ensure_future(stop.wait())
    item: asyncio.Future[T] | None = None
    try:
        while True:
            item = asyncio.ensure_future(anext(source))
            await asyncio.wait({item, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not item.done():
                yield None
                return
            try:
                value = item.result()
            except StopAsyncIteration:
                return
            item = None
            yield value
    finally:
        stopped.cancel()
        if item is not None and not item.done():  # revoked, or the client went away
            item.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await item


async def stream(request: Request) -> Response:
    params = await _params(request)
    if isinstance(params, JSONResponse):
        return params
    query = params.get("query")
    variables = params.get("variables") or {}
    if not isinstance(query, str) or not isinstance(variables, dict):
        return _error("query: give a subscription document, and variables as a JSON object")
    last_event_id = request.headers.get("last-event-id")
    if last_event_id and "after" not in variables:
        variables["after"] = last_event_id
    services: Services = request.app.state.services
    principal = request.state.principal
    result = await build_schema().subscribe(
        query,
        variable_values=variables,
        context_value=Context(services=services, principal=principal),
        operation_name=params.get("operationName"),
    )
    if not isinstance(result, AsyncIterator):  # refused before it started
        return JSONResponse({"errors": _formatted(result.errors)}, status_code=400)
    revoked = asyncio.Event()
    services.authenticator.track(principal, revoked)

    async def events() -> AsyncIterator[dict[str, Any]]:
        try:
            # aclosing: leaving the loop closes `_until` (and its pending read) at once,
            # before the subscription itself is closed below
            async with contextlib.aclosing(_until(result, revoked)) as items:
                async for item in items:
                    if item is None:  # the key was revoked
                        yield {"event": "next", "data": jsonx.dumps(REVOKED).decode()}
                        break
                    payload: dict[str, Any] = {"data": item.data}
                    if item.errors:
                        payload["errors"] = _formatted(item.errors)
                    event = {"event": "next", "data": jsonx.dumps(payload).decode()}
                    if cursor := _cursor(item.data):
                        event["id"] = cursor
                    yield event
            yield {"event": "complete", "data": ""}
        finally:
            await result.aclose()

    return EventSourceResponse(events(), ping=PING_SECONDS)
