"""Who is calling: API keys on HTTP (`Authorization: Bearer <key>`) and websockets (the same
in the `connection_init` payload, or the upgrade request's header).

- `AuthMiddleware` answers 401 with a GraphQL `UNAUTHENTICATED` error before any GraphQL
  work when an HTTP request to /graphql or /graphql/stream has no valid key (the GraphiQL
  page itself loads without one: paste the key into its Headers tab).
- `Authenticator` resolves keys (cached per process) and, every AUTH_RECHECK_SECONDS, looks
  for revoked keys: it forgets them, closes their open websockets (code 4403) and ends
  their Server-Sent Events streams. Unknown keys are remembered as unknown for a few
  seconds (a bogus key repeated costs no query each time).
- `SubscriptionLeases` bounds the subscriptions one key holds open, over every connection
  and api replica (MAX_SUBSCRIPTIONS_PER_KEY), with leases in Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
import weakref
from collections import OrderedDict, defaultdict
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.datastructures import Headers, QueryParams
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketState

from taskrunner import db, keys
from taskrunner.config import Settings
from taskrunner.errors import LimitExceeded
from taskrunner.keys import ANONYMOUS, Principal

log = logging.getLogger(__name__)

CACHE_SECONDS = 60.0  # a key stays resolved this long (revocation evicts it sooner)
CACHE_SIZE = 10_000
# An unknown (or revoked) key stays unknown this long without a query. A key cannot become
# valid later: its secret exists only once `keys create` has stored its hash.
UNKNOWN_SECONDS = 5.0
UNKNOWN_SIZE = 10_000  # the oldest are forgotten first
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
        self._unknown: OrderedDict[str, float] = OrderedDict()  # digest -> until (monotonic)
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
        """Who holds `secret`; None for a missing, unknown or revoked key.

        A key whose revocation this process has seen is never answered as valid, also when
        its lookup was under way as the revocation was seen (the row it read was older).
        Once this returns a principal, no revocation has been seen for it: a caller that
        `track`s it without awaiting anything in between cannot miss the one that comes."""
        if self.disabled:
            return ANONYMOUS
        if not secret:
            return None
        digest = keys.hash_key(secret)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        unknown_until = self._unknown.get(digest)
        if unknown_until is not None and unknown_until > now:
            return None
        found = await keys.authenticate(self.engine, secret)
        if found is not None and self.revoked(found):
            found = None  # revoked while it was looked up
        now = time.monotonic()
        if found is None:
            self._unknown.pop(digest, None)
            self._unknown[digest] = now + UNKNOWN_SECONDS
            while len(self._unknown) > UNKNOWN_SIZE:
                self._unknown.popitem(last=False)
            return None
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[digest] = (found, now + CACHE_SECONDS)
        return found

    def revoked(self, principal: Principal) -> bool:
        """Whether this process has seen the principal's key revoked."""
        return principal.key_id is not None and principal.key_id in self._seen_revoked

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


def unavailable() -> JSONResponse:
    """The answer while PostgreSQL cannot be reached to look a key up (503, Retry-After)."""
    error = db.unavailable_error()
    body = {"errors": [{"message": error.message, "extensions": error.extensions}]}
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(db.RETRY_AFTER_SECONDS)})


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
        try:
            principal = await authenticator.principal(secret)
        except Exception as exc:
            if not db.unavailable(exc):
                raise
            log.warning("key lookup failed: the database is unavailable", exc_info=exc)
            if scope["type"] == "websocket":  # before accepting: 1013, try again later
                await send({"type": "websocket.close", "code": 1013})
            else:
                await unavailable()(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        if principal is None and scope["type"] == "http" and not _is_graphiql_page(scope):
            why = "the API key is unknown or revoked" if secret else "no API key"
            response = unauthenticated(f"{why}: {HOW_TO}")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _is_graphiql_page(scope: Scope) -> bool:
    """A browser's GET of the GraphiQL page: public (the page asks for the key). The page
    keeps what is being edited in its URL (?q=...&variables=...), so only a `query`
    parameter makes it a GraphQL request, as strawberry decides."""
    headers = Headers(scope=scope)
    return (
        scope["method"] == "GET"
        and scope["path"] == "/graphql"
        and "text/html" in headers.get("accept", "")
        and "query" not in QueryParams(scope.get("query_string", b""))
    )


# A lease is a member of its key's sorted set, scored by when it expires (Redis's clock, in
# ms). Taking one drops the expired ones, counts the rest and adds it when under the limit,
# atomically. The set itself expires with its newest lease.
_TAKE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
# Renewing moves the given leases' expiry on; a lease removed meanwhile stays removed (XX).
_RENEW = """
local t = redis.call('TIME')
local expires = t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', expires, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""


class SubscriptionLeases:
    """MAX_SUBSCRIPTIONS_PER_KEY, over every websocket and Server-Sent Events stream of a
    key on every api replica: each open subscription holds a lease in Redis.

    A subscription takes its lease as it starts (refused with LIMIT_EXCEEDED when its key
    has as many as the limit) and removes it when it ends. A replica renews its leases
    every third of SUBSCRIPTION_LEASE_SECONDS; one that dies without removing them (SIGKILL,
    the OOM killer, a lost host) stops renewing them, and they stop counting once expired,
    so a crash never leaks slots for good. Expiry uses Redis's clock (TIME in the scripts):
    the replicas' clocks need not agree."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.limit = settings.max_subscriptions_per_key
        self.lease_ms = int(settings.subscription_lease_seconds * 1000)
        self._replica = uuid.uuid4().hex  # leases are named `<replica>:<n>`
        self._numbers = itertools.count(1)
        self._held: dict[str, set[str]] = defaultdict(set)  # Redis key -> this replica's leases
        self._take = redis.register_script(_TAKE)
        self._renew = redis.register_script(_RENEW)
        self._renewer: asyncio.Task[None] | None = None
        self._releases: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._renewer = asyncio.create_task(self._renew_all(), name="subscription-leases")

    async def stop(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        await asyncio.gather(*self._releases, return_exceptions=True)

    @staticmethod
    def key_of(principal: Principal) -> str:
        """The Redis key counting the principal's key's subscriptions (AUTH_DISABLED: the
        one anonymous caller's)."""
        return f"taskrunner:subscriptions:{principal.key_id or 'anonymous'}"

    @contextlib.asynccontextmanager
    async def hold(self, principal: Principal) -> AsyncIterator[None]:
        """Hold one of the key's slots while the subscription runs; LIMIT_EXCEEDED when it
        has none left."""
        key = self.key_of(principal)
        lease = f"{self._replica}:{next(self._numbers)}"
        if not await self._take(keys=[key], args=[lease, self.limit, self.lease_ms]):
            raise LimitExceeded(
                f"this API key already has {self.limit} open subscriptions "
                "(MAX_SUBSCRIPTIONS_PER_KEY), over all its websockets and Server-Sent Events "
                "streams on every api replica; complete one before starting another, or share "
                "one (tasksUpdates follows every task of an owner), or have the operator raise "
                "MAX_SUBSCRIPTIONS_PER_KEY. Those of an api replica that stopped without "
                "closing them stop counting after SUBSCRIPTION_LEASE_SECONDS."
            )
        self._held[key].add(lease)
        try:
            yield
        finally:
            held = self._held.get(key)
            if held is not None:
                held.discard(lease)
                if not held:
                    del self._held[key]
            # In a task of its own: the subscription ends by cancellation, where an await
            # may be cancelled again (Server-Sent Events: anyio cancels every await of a
            # disconnected stream's scope).
            release = asyncio.create_task(self._release(key, lease))
            self._releases.add(release)
            release.add_done_callback(self._releases.discard)

    async def _release(self, key: str, lease: str) -> None:
        try:
            await self.redis.zrem(key, lease)
        except (RedisError, OSError) as exc:  # no longer renewed: it expires by itself
            log.warning("could not remove a subscription lease (it will expire): %s", exc)

    async def renew(self) -> None:
        """Move the expiry of every lease this replica holds on by a lease's length."""
        for key, held in list(self._held.items()):
            if held:
                await self._renew(keys=[key], args=[self.lease_ms, *held])

    async def _renew_all(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            try:
                await self.renew()
            except (RedisError, OSError) as exc:  # Redis away: try again next round
                log.warning("could not renew subscription leases: %s", exc)
