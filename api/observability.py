"""What operators look at: request ids in logs, Prometheus metrics, health and readiness."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.extensions import SchemaExtension
from strawberry.types.graphql import OperationType

from taskrunner import metrics
from taskrunner.db import head_revision
from taskrunner.logs import bound

REQUEST_ID = "x-request-id"
log = logging.getLogger(__name__)


class RequestIdMiddleware:
    """Every HTTP request and websocket gets an id (the client's `X-Request-ID`, or a new
    one): bound into every log line it causes, and echoed in the response header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(REQUEST_ID.encode(), b"").decode("latin-1")
        request_id = given[:64] if given else uuid.uuid4().hex[:16]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append(REQUEST_ID, request_id)
            await send(message)

        with bound(request_id=request_id):
            # a websocket's messages carry no headers: its sends go straight through
            await self.app(scope, receive, send_with_id if scope["type"] == "http" else send)


class GraphQLMetrics(SchemaExtension):
    """taskrunner_graphql_request_duration_seconds{operation} for queries and mutations."""

    def on_operation(self) -> Iterator[None]:
        started = time.perf_counter()
        yield
        context = self.execution_context
        try:
            if context.operation_type is OperationType.SUBSCRIPTION:
                return  # lasts as long as the client listens: not a latency
        except RuntimeError:  # the document did not parse
            pass
        metrics.GRAPHQL_DURATION.labels(metrics.operation_label(context.operation_name)).observe(
            time.perf_counter() - started
        )


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text format; the queue depth is read from Redis at each scrape."""
    services: Any = request.app.state.services
    try:
        metrics.QUEUE_DEPTH.set(await services.redis.zcard(services.settings.queue_name))
    except Exception:
        metrics.QUEUE_DEPTH.set(float("nan"))
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def healthz(request: Request) -> Response:
    """The process is up."""
    return JSONResponse({"status": "ok"})


# What /readyz says of a dependency that failed its check. Not the exception's text: that
# names hosts, ports, databases, SQL and driver details to whoever can reach the probe.
DOWN = "error (details in the api log)"


async def readyz(request: Request) -> Response:
    """PostgreSQL answers with its migrations at head, and Redis answers. A failed check
    is logged with its error; the answer only names which dependency it was."""
    services: Any = request.app.state.services
    checks: dict[str, Any] = {}
    try:
        async with services.engine.connect() as conn:
            current = await conn.scalar(sa.text("SELECT version_num FROM alembic_version"))
        head = head_revision()
        checks["postgres"] = "ok"
        checks["migrations"] = (
            "ok" if current == head else f"at {current}, head is {head}: run taskrunner migrate"
        )
    except Exception as exc:
        log.warning("readyz: postgres is not ready: %s: %s", type(exc).__name__, exc)
        checks["postgres"] = DOWN
    try:
        await services.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        log.warning("readyz: redis is not ready: %s: %s", type(exc).__name__, exc)
        checks["redis"] = DOWN
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)
