"""Who is calling: API keys on HTTP (`Authorization: Bearer <key>`) and websockets (the same
in the `connection_init` payload, or the upgrade request's header).

- `AuthMiddleware` answers 401 with a GraphQL `UNAUTHENTICATED` error before any GraphQL
  work when an HTTP request to /graphql or /graphql/stream has no valid key (the GraphiQL
  page itself loads without one: paste the key into its Headers tab).
- `Authenticator` resolves keys (cached per process) and, every AUTH_RECHECK_SECONDS, looks
  for revoked keys: it forgets them, closes their open websockets (code 4403) and ends
  their Server-Sent Events streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import weakref
from collections import defaultdict
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketState

from taskrunner import keys
from taskrunner.config import Settings
from taskrunner.keys import ANONYMOUS, Principal

log = logging.getLogger(__name__)

CACHE_SECONDS = 60.0  # a key stays resolved this long (revocation evicts it sooner)
CACHE_SIZE = 10_000
REVOKED_CLOSE_CODE = 4403  # graphql-transport-ws: Forbidden
HOW_TO = (
    "send the header `Authorization: Bearer <key>` (websockets: the same in the "
    'connection_init payload, {"Authorization": "Bearer <key>"}); '
    "`taskrunner keys create NAME` makes a key"
)
PROTECTED = ("/graphql", "/graphql/stream")


def bearer(value: object) -> str | None:
    """The key in an `Authorization: Bearer <key>` value."""
    if not isinstance(value, str):
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def key_in(params: Mapping[str, Any] | None) -> str | None:
    """The key in a connection_init payload: `Authorization` (any case) or `apiKey`."""
    for name, value in (params or {}).items():
        if isinstance(name, str) and name.lower() == "authorization":
            return bearer(value)
    api_key = (params or {}).get("apiKey")
    return api_key if isinstance(api_key, str) else None


class Authenticator:
    """Resolves keys to principals and enforces revocation in this api process."""

    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self.engine = engine
        self.disabled = settings.auth_disabled
        self.recheck_seconds = settings.auth_recheck_seconds
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._open: dict[uuid.UUID, weakref.WeakSet[WebSocket | asyncio.Event]] = defaultdict(
            weakref.WeakSet
        )
        self._seen_revoked: set[uuid.UUID] = set()
        self._since: datetime | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        if self.disabled:
            log.warning(
                "AUTH_DISABLED=true: the api accepts every caller without a key, as one owner; "
                "never run it like this where others can reach it"
            )
            return
        async with self.engine.connect() as conn:
            self._since = await conn.scalar(sa.select(sa.func.clock_timestamp()))
        self._watcher = asyncio.create_task(self._watch(), name="revoked-keys")

    async def stop(self) -> None:
        """Let the watcher finish its round (a query cancelled midway can strand its
        connection outside the pool), then end it."""
        self._stopping.set()
        if self._watcher is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._watcher), 5)
            except TimeoutError:
                self._watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._watcher

    async def principal(self, secret: str | None) -> Principal | None:
        """Who holds `secret`; None for a missing, unknown or revoked key."""
        if self.disabled:
            return ANONYMOUS
        if not secret:
            return None
        digest = keys.hash_key(secret)
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        found = await keys.authenticate(self.engine, secret)
        if found is not None:
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[digest] = (found, now + CACHE_SECONDS)
        return found

    def track(self, principal: Principal, connection: WebSocket | asyncio.Event) -> None:
        """When the principal's key is revoked, close this websocket, or set this event (a
        Server-Sent Events stream waits on it). Held weakly: a closed one just drops out."""
        if principal.key_id is not None:
            self._open[principal.key_id].add(connection)

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.recheck_seconds)
                return
            try:
                await self.check_revoked()
            except Exception:  # PostgreSQL away: try again next round
                log.warning("could not look for revoked keys", exc_info=True)

    async def check_revoked(self) -> None:
        """Forget keys revoked since the last look and close their websockets. The window
        reaches back a minute, as a revocation may commit after a later one."""
        since = None if self._since is None else self._since - timedelta(minutes=1)
        for key_id, revoked_at in await keys.revoked_since(self.engine, since):
            self._since = max(self._since or revoked_at, revoked_at)
            if key_id in self._seen_revoked:
                continue
            self._seen_revoked.add(key_id)
            self._cache = {d: p for d, p in self._cache.items() if p[0].key_id != key_id}
            for connection in list(self._open.pop(key_id, ())):
                if isinstance(connection, asyncio.Event):
                    connection.set()
                elif connection.application_state is WebSocketState.CONNECTED:
                    with contextlib.suppress(Exception):
                        await connection.close(REVOKED_CLOSE_CODE, "API key revoked")


def unauthenticated(message: str) -> JSONResponse:
    body = {"errors": [{"message": message, "extensions": {"code": "UNAUTHENTICATED"}}]}
    return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})


class AuthMiddleware:
    """Resolves the caller of every GraphQL request into `scope["state"]["principal"]`;
    refuses HTTP requests without a valid key."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] not in PROTECTED:
            await self.app(scope, receive, send)
            return
        authenticator: Authenticator = scope["app"].state.services.authenticator
        headers = Headers(scope=scope)
        secret = bearer(headers.get("authorization"))
        principal = await authenticator.principal(secret)
        scope.setdefault("state", {})["principal"] = principal
        if principal is None and scope["type"] == "http" and not _is_graphiql_page(scope):
            why = "the API key is unknown or revoked" if secret else "no API key"
            response = unauthenticated(f"{why}: {HOW_TO}")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _is_graphiql_page(scope: Scope) -> bool:
    headers = Headers(scope=scope)
    return (
        scope["method"] == "GET"
        and scope["path"] == "/graphql"
        and "text/html" in headers.get("accept", "")
        and not scope.get("query_string")
    )
