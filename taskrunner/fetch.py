"""Fetching web pages for tasks, safely: an allowlist of hosts, an SSRF guard, caps on
size and redirects.

- FETCH_DOMAIN_ALLOWLIST holds glob patterns of hosts; `*` allows any *public* host.
- A host that resolves to a loopback, private, link-local (cloud metadata included),
  reserved or multicast address is refused unless a pattern other than `*` names it.
- Redirects are followed by hand, each hop checked again; bodies are read as a stream and
  cut off past their cap.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

USER_AGENT = "taskrunner-webscrape/0.1"
METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)


class FetchRefused(Exception):
    """The URL's host is not allowed (allowlist, or a non-public address)."""


class TooManyRedirects(Exception):
    """More redirects than allowed, or a redirect loop."""


class ResponseTooLarge(Exception):
    """The body passed its size cap."""


def patterns(allowlist: str) -> list[str]:
    return [p.strip().lower() for p in allowlist.split(",") if p.strip()]


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether an address is an ordinary public one (not loopback, private, link-local,
    metadata, reserved, multicast or unspecified)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not (
        address in METADATA_ADDRESSES
        or address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_reserved
        or address.is_multicast
        or address.is_unspecified
        or not address.is_global
    )


async def resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses `host` resolves to (an IP literal resolves to itself, no DNS)."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(info[4][0]) for info in infos]


async def check_url(url: str, allowlist: str) -> None:
    """Refuse (FetchRefused) a URL this service must not fetch."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchRefused(f"{url!r}: only http and https URLs with a host can be fetched")
    host = parts.hostname.lower()
    allowed = patterns(allowlist)
    explicit = any(p != "*" and fnmatch.fnmatch(host, p) for p in allowed)
    if not explicit and "*" not in allowed:
        raise FetchRefused(
            f"host {host} is not in FETCH_DOMAIN_ALLOWLIST ({allowlist!r}); add it to fetch it"
        )
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = await resolve(host, port)
    except OSError as exc:
        raise FetchRefused(f"host {host} does not resolve: {exc}") from None
    hidden = [a for a in addresses if not is_public(a)]
    if hidden and not explicit:
        raise FetchRefused(
            f"host {host} resolves to a non-public address ({hidden[0]}); allow it explicitly "
            "in FETCH_DOMAIN_ALLOWLIST (a pattern naming it, not `*`) to fetch it"
        )


@dataclass(frozen=True)
class Page:
    status_code: int
    final_url: str
    content_type: str
    body: bytes


async def fetch(
    url: str,
    *,
    allowlist: str,
    max_bytes: int,
    max_redirects: int,
    timeout_seconds: float = 15.0,
) -> Page:
    """GET `url`, following at most `max_redirects` redirects, each hop checked."""
    async with httpx.AsyncClient(
        follow_redirects=False,
        timeout=timeout_seconds,
        headers={"User-Agent": USER_AGENT},
        trust_env=False,
    ) as client:
        seen: set[str] = set()
        for _ in range(max_redirects + 1):
            await check_url(url, allowlist)
            seen.add(url)
            async with client.stream("GET", url) as response:
                if response.is_redirect and "location" in response.headers:
                    target = urljoin(url, response.headers["location"])
                    if target in seen:
                        raise TooManyRedirects(f"redirect loop: {target} again")
                    url = target
                    continue
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > max_bytes:
                        raise ResponseTooLarge(
                            f"{url}: body is over {max_bytes} bytes; raise maxBytes to fetch it"
                        )
                return Page(
                    response.status_code,
                    str(response.url),
                    response.headers.get("content-type", ""),
                    bytes(body),
                )
    raise TooManyRedirects(f"more than {max_redirects} redirects starting from the given url")
