"""The Starlette application: /graphql (HTTP, websockets, GraphiQL), /healthz, /readyz.

Build it with `create_app(settings)`; uvicorn runs it with `--factory api.app:create_app`.
Connections are made in the lifespan, never at import.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http import GraphQLHTTPResponse
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL
from strawberry.types import ExecutionResult
from strawberry.types.unset import UNSET, UnsetType

from api import sse
from api.auth import (
    HOW_TO,
    Authenticator,
    AuthMiddleware,
    SubscriptionLeases,
    bearer,
    key_in,
    unauthenticated,
)
from api.context import Context, Services
from api.errors import classify
from api.fanout.handlers import FanoutTransportWSHandler, GraphQLWSHandler
from api.graphiql import STATIC_DIR, STATIC_PATH, dev_key_for, graphiql_page
from api.limits import BodyLimitMiddleware
from api.observability import RequestIdMiddleware, healthz, metrics_endpoint, readyz
from api.origins import OriginMiddleware
from api.schema import build_schema
from api.types.service import Limits
from taskrunner import dag, jsonx, queries, queue, tasklogs, tracing
from taskrunner.artifacts.downloads import attachment
from taskrunner.artifacts.quotas import Quota
from taskrunner.artifacts.records import get_artifact
from taskrunner.artifacts.signing import Signer
from taskrunner.artifacts.storage import make_store
from taskrunner.artifacts.streams import ArtifactTooLarge
from taskrunner.artifacts.uploads import find_upload, receive_upload
from taskrunner.config import Settings, get_settings
from taskrunner.db import engine_for
from taskrunner.errors import NotFound
from taskrunner.hub import EventHub
from taskrunner.logs import redact_access_log
from taskrunner.ratelimit import RateLimiter
from workers.catalog import input_check

log = logging.getLogger(__name__)
NOSNIFF = {"X-Content-Type-Options": "nosniff"}  # the declared type holds; no guessing


def _http_base(base_url: str) -> str:
    """Links the api serves are http(s), also when made for a websocket (ws, wss)."""
    if base_url.startswith("ws"):
        base_url = "http" + base_url.removeprefix("ws")
    return base_url.rstrip("/")


class GraphQLApp(GraphQL[Context, None]):
    # graphql-transport-ws with live events written straight to the socket (api.fanout)
    graphql_transport_ws_handler_class = FanoutTransportWSHandler
    # the older graphql-ws protocol, with errors classified and a connection_init timeout
    graphql_ws_handler_class = GraphQLWSHandler

    dev_key: str | None = None  # the page comes authorised with it (api.graphiql.dev_key_for)

    @cached_property
    def graphql_ide_html(self) -> str:
        """GraphiQL with its scripts served from here, so it works without internet, and
        example tabs (authorised under `taskrunner dev`)."""
        return graphiql_page(super().graphql_ide_html, dev_key=self.dev_key)

    def encode_json(self, data: object) -> str:
        """orjson instead of the standard library (see the README's Performance). Text,
        not bytes: strawberry sends bytes over a websocket as binary frames, which
        graphql-ws clients do not read."""
        return jsonx.dumps(data).decode()

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> Context:
        services: Services = request.app.state.services
        return Context(
            services=services,
            principal=request.scope.get("state", {}).get("principal"),
            base_url=_http_base(str(request.base_url)),
            response=response if isinstance(response, Response) else None,
            websocket=request if isinstance(request, WebSocket) else None,
        )

    async def process_result(
        self, request: Request, result: ExecutionResult
    ) -> GraphQLHTTPResponse:
        """Every error an HTTP client sees is classified, also those raised where the
        ErrorCodes extension does not reach (another extension's hook)."""
        if result.errors:
            result.errors = [classify(e) for e in result.errors]
        return await super().process_result(request, result)

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        """The key in connection_init (or the upgrade request's header): checked now, before
        any subscription starts, also when the upgrade already resolved it (it may have
        been revoked since); without a valid one the socket closes with 4403."""
        authenticator = context.services.authenticator
        secret = key_in(context.connection_params)
        if secret is None and context.websocket is not None:
            secret = bearer(context.websocket.headers.get("authorization"))
        context.principal = await authenticator.principal(secret)
        if context.principal is None:
            raise ConnectionRejectionError({"code": "UNAUTHENTICATED", "message": HOW_TO})
        if context.websocket is not None:  # nothing awaited since the lookup: see `principal`
            authenticator.track(context.principal, context.websocket)
        return UNSET  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    engine = engine_for(settings, "api")
    tracing.instrument_engine(engine)
    redis = await queue.connect(settings.require_redis_url(), settings.queue_name)
    hub = EventHub(redis)
    await hub.start()
    authenticator = Authenticator(engine, settings)
    await authenticator.start()
    leases = SubscriptionLeases(redis, settings)
    await leases.start()
    app.state.services = Services(
        settings=settings,
        engine=engine,
        redis=redis,
        hub=hub,
        store=make_store(settings),
        signer=Signer(_signing_key(settings)),
        authenticator=authenticator,
        rate_limiter=RateLimiter(redis, settings.tasks_per_minute),
        leases=leases,
    )
    try:
        yield
    finally:
        await leases.stop()
        await authenticator.stop()
        await hub.stop()
        await app.state.services.store.aclose()
        await redis.aclose()
        await engine.dispose()


def _signing_key(settings: Settings) -> bytes:
    if settings.artifact_signing_key is not None:
        return settings.artifact_signing_key.get_secret_value().encode()
    log.warning(
        "ARTIFACT_SIGNING_KEY is not set: artifact URLs are signed with a key of this "
        "process only; set it (the same on every api replica) for URLs that survive restarts"
    )
    return os.urandom(32)


def _signed_id(request: Request, param: str, purpose: str) -> uuid.UUID | Response:
    """The id in a signed link, or the 403 answer for a malformed, forged or expired one."""
    services: Services = request.app.state.services
    try:
        link_id = uuid.UUID(request.path_params[param])
        expires = int(request.query_params["expires"])
        signature = request.query_params["signature"]
    except (KeyError, ValueError):
        return PlainTextResponse(f"bad {purpose} link: ask the api for a new one", 403)
    if not services.signer.valid(link_id, expires, signature, purpose):
        return PlainTextResponse(f"{purpose} link expired or invalid: ask for a new one", 403)
    return link_id


async def artifact_download(request: Request) -> Response:
    """An artifact's bytes, for a URL signed by `Artifact.url` that has not expired."""
    services: Services = request.app.state.services
    artifact_id = _signed_id(request, "artifact_id", "download")
    if isinstance(artifact_id, Response):
        return artifact_id
    artifact = await get_artifact(services.engine, artifact_id)
    path = None if artifact is None else services.store.served_file(artifact.key)
    if artifact is None or path is None:  # no such artifact, or the store serves it
        return PlainTextResponse("no such artifact", 404)
    # The signed link is the credential (a browser follows it without headers); a request
    # that does name a key must be of the artifact's owner, or an admin.
    secret = bearer(request.headers.get("authorization"))
    if secret is not None:
        caller = await services.authenticator.principal(secret)
        if caller is None:
            return unauthenticated(f"the API key is unknown or revoked: {HOW_TO}")
        if caller.scope is not None and caller.scope != artifact.owner:
            return PlainTextResponse("no such artifact", 404)
    return FileResponse(
        path,
        media_type=artifact.content_type,
        # saved, never rendered here: an HTML artifact must not run as a page of the api
        headers={"Content-Disposition": attachment(artifact.name), **NOSNIFF},
    )


async def task_log(request: Request) -> Response:
    """A task's log (`Task.logsUrl`), read from its events as it is sent (see
    taskrunner.tasklogs), for a signed link that has not expired; the same rule for a key
    sent along as for artifacts."""
    services: Services = request.app.state.services
    task_id = _signed_id(request, "task_id", "log")
    if isinstance(task_id, Response):
        return task_id
    secret = bearer(request.headers.get("authorization"))
    owner = None
    if secret is not None:
        caller = await services.authenticator.principal(secret)
        if caller is None:
            return unauthenticated(f"the API key is unknown or revoked: {HOW_TO}")
        owner = caller.scope
    if await queries.get(engine=services.engine, task_id=task_id, owner=owner) is None:
        return PlainTextResponse("no such task", 404)
    return StreamingResponse(
        tasklogs.task_log(services.engine, task_id),
        media_type=tasklogs.CONTENT_TYPE,
        headers={"Cache-Control": "no-store", **NOSNIFF},
    )


async def artifact_upload(request: Request) -> Response:
    """The bytes of an upload granted by createArtifactUpload (local store), streamed in
    and refused past TASK_MAX_ARTIFACT_MB (or what the grant reserved of its owner's
    OWNER_MAX_ARTIFACT_MB)."""
    services: Services = request.app.state.services
    upload_id = _signed_id(request, "upload_id", "upload")
    if isinstance(upload_id, Response):
        return upload_id
    upload = await find_upload(services.engine, upload_id)
    if upload is None:
        return PlainTextResponse("no such upload: call createArtifactUpload again", 404)
    try:
        stored = await receive_upload(
            engine=services.engine,
            store=services.store,
            upload=upload,
            data=request.stream(),
            max_bytes=int(services.settings.task_max_artifact_mb * 1024 * 1024),
            quota=Quota.of(services.settings),
        )
    except ArtifactTooLarge as exc:
        return PlainTextResponse(exc.message, 413)
    except NotFound as exc:
        return PlainTextResponse(exc.message, 404)
    return JSONResponse({"size": stored.size, "sha256": stored.sha256})


async def limits(request: Request) -> Response:
    """`GET /limits`: the effective limits (what the `limits` query answers), as JSON."""
    services: Services = request.app.state.services
    return JSONResponse(Limits.of(services.settings).as_json())


DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "frontend-examples" / "dashboard" / "dist"


def _dashboard(settings: Settings) -> list[BaseRoute]:
    """The console at /dashboard/, once built (`make dashboard`, which `make dev` runs), and
    its /dashboard/config.json: the dev key under `taskrunner dev` on a loopback address
    (api.graphiql.dev_key_for), so that a first run needs no pasting; {} elsewhere."""
    if not (DASHBOARD_DIR / "index.html").is_file():
        return []
    key = dev_key_for(settings)

    async def config(request: Request) -> Response:
        return JSONResponse({"devKey": key} if key else {}, headers={"Cache-Control": "no-store"})

    return [
        Route("/dashboard/config.json", config),
        Mount("/dashboard", app=StaticFiles(directory=DASHBOARD_DIR, html=True), name="dashboard"),
    ]


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or get_settings()
    tracing.setup("taskrunner-api", settings)
    dag.check_bound_inputs(input_check(settings))  # steps cancelWorkflow/retry make ready
    redact_access_log()  # signed links and the dashboard's ?key= stay out of access logs
    graphql = GraphQLApp(
        build_schema(),
        graphql_ide="graphiql",
        subscription_protocols=[GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL],
        # strawberry's own Origin check of websockets: the origins api.origins lets through
        allowed_origins=settings.allowed_origin_list(),
        keep_alive=True,  # graphql-ws "ka" messages; uvicorn pings websockets as well
        keep_alive_interval=15,
        connection_init_wait_timeout=timedelta(seconds=settings.ws_connection_init_timeout_seconds),
        max_subscriptions_per_connection=None,  # ours: Context.subscription_slot
    )
    graphql.dev_key = dev_key_for(settings)
    app = Starlette(
        routes=[
            Route("/graphql/stream", sse.stream, methods=["GET", "POST"]),
            Route("/graphql", graphql, methods=["GET", "POST"]),
            WebSocketRoute("/graphql", graphql),
            Mount(STATIC_PATH, app=StaticFiles(directory=STATIC_DIR), name="graphiql-static"),
            *_dashboard(settings),
            Route("/artifacts/uploads/{upload_id}", artifact_upload, methods=["PUT"]),
            Route("/artifacts/{artifact_id}", artifact_download),
            Route("/tasks/{task_id}/log", task_log),
            Route("/limits", limits),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
        ],
        lifespan=_lifespan,
        middleware=[
            *(
                [Middleware(OpenTelemetryMiddleware, server_request_hook=tracing.redact_span)]
                if tracing.enabled()
                else []
            ),
            Middleware(RequestIdMiddleware),
            Middleware(OriginMiddleware, settings=settings),
            Middleware(BodyLimitMiddleware, limit=settings.max_request_bytes),
            Middleware(AuthMiddleware),
        ],
    )
    app.state.settings = settings
    return app


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """What uvicorn needs beyond the app: websocket messages are capped like bodies, and
    written once per loop turn per connection (api.fanout.websocket)."""
    # permessage-deflate is off: subscription messages are small, and compressing each
    # costs more CPU on both sides than it saves (the README's Performance).
    return {
        "ws": "api.fanout.websocket:CoalescingWebSocketsProtocol",
        "ws_max_size": settings.max_request_bytes,
        "lifespan": "on",
        "ws_per_message_deflate": False,
    }
