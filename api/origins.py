"""Which web pages may call the api from a browser (ALLOWED_ORIGINS).

A request that carries an `Origin` header (browsers add it to cross-origin requests, to
POSTs and to websockets) is let through when that origin is the api's own or one of
ALLOWED_ORIGINS (`*`: any). Otherwise it is refused, and says so where the page can read
it: HTTP answers 403 with a GraphQL-shaped error (carrying Access-Control-Allow-Origin, so
the page's script sees the message instead of an opaque network error; its preflight is
answered, so that the browser gets that far); a websocket is
accepted and at once closed with 4403 and the reason (a refused handshake would reach the
page only as code 1006). Requests without `Origin` (curl, servers, the Python client) are
not concerned.

For the allowed origins, HTTP gets CORS from Starlette's CORSMiddleware: preflights
answered, the Authorization header allowed, results readable."""

from __future__ import annotations

import orjson
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from strawberry.http.websocket_origin import normalize_origin

from taskrunner.config import Settings

REFUSED_CLOSE_CODE = 4403  # graphql-transport-ws: Forbidden


def own_origin(scope: Scope) -> str | None:
    """scheme://host[:port] of the api as this request addressed it (its Host header)."""
    host = Headers(scope=scope).get("host")
    if not host:
        return None
    scheme = {"ws": "http", "wss": "https"}.get(scope.get("scheme", "http"), scope["scheme"])
    return normalize_origin(f"{scheme}://{host}")


def refusal(origin: str) -> str:
    return (
        f"origin {origin} is not allowed to call this api from a browser: add it to "
        "ALLOWED_ORIGINS (comma-separated, e.g. ALLOWED_ORIGINS=http://localhost:5173)"
    )


class OriginMiddleware:
    """Refuses browsers' requests from other origins than the api's own and ALLOWED_ORIGINS
    (see the module); CORS for the allowed ones."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.allowed = settings.allowed_origin_list()
        self.any = "*" in self.allowed
        self.normalized = {normalize_origin(o) for o in self.allowed} - {None}
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=["*"] if self.any else sorted(o for o in self.normalized if o),
            allow_methods=["GET", "POST", "PUT", "OPTIONS"],
            allow_headers=["authorization", "content-type", "last-event-id", "x-request-id"],
            expose_headers=["x-request-id", "retry-after"],
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None or normalize_origin(origin) == own_origin(scope):
            await self.app(scope, receive, send)
        elif self.any or normalize_origin(origin) in self.normalized:
            await (self.cors if scope["type"] == "http" else self.app)(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._close(scope, receive, send, origin)
        elif scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            # let the browser make its request, so that the page can read the refusal
            await self._preflight(send, origin, headers)
        else:
            await self._forbid(send, origin)

    @staticmethod
    async def _preflight(send: Send, origin: str, headers: Headers) -> None:
        asked = headers.get("access-control-request-headers", "")
        await send(
            {
                "type": "http.response.start",
                "status": 204,
                "headers": [
                    (b"access-control-allow-origin", origin.encode("latin-1")),
                    (b"access-control-allow-methods", b"GET, POST, PUT, OPTIONS"),
                    (b"access-control-allow-headers", asked.encode("latin-1")),
                    (b"vary", b"Origin"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    @staticmethod
    async def _forbid(send: Send, origin: str) -> None:
        body = orjson.dumps(
            {"errors": [{"message": refusal(origin), "extensions": {"code": "FORBIDDEN"}}]}
        )
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"access-control-allow-origin", origin.encode("latin-1")),
                    (b"vary", b"Origin"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _close(scope: Scope, receive: Receive, send: Send, origin: str) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        offered = scope.get("subprotocols") or []
        accept: dict[str, object] = {"type": "websocket.accept"}
        if offered:  # a browser drops a socket that chose none of the offered protocols
            accept["subprotocol"] = offered[0]
        await send(accept)
        reason = f"origin {origin} not allowed: add it to ALLOWED_ORIGINS"
        reason = reason.encode()[:123].decode(errors="ignore")  # a close reason's limit
        await send({"type": "websocket.close", "code": REFUSED_CLOSE_CODE, "reason": reason})
