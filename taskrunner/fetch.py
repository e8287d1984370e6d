"""Fetching web pages for tasks, safely: an allowlist of hosts, an SSRF guard, caps on
size and redirects.

- FETCH_DOMAIN_ALLOWLIST holds glob patterns of hosts; `*` allows any *public* host.
- Every address a host resolves to is classified (`reach`). A private one (RFC 1918,
  carrier-grade NAT, unique-local, reserved, ...) needs a pattern other than `*` that
  matches the host. A local one (loopback, link-local, unspecified, cloud metadata) needs
  more: an entry without wildcards that is the host itself, or the address itself, so that
  `*.example.com` never opens 127.0.0.1 or 169.254.169.254 to whoever controls a name
  under it. IPv6 forms that carry an IPv4 address (IPv4-mapped, 6to4, NAT64, Teredo,
  IPv4-compatible) are classified by the address they carry too.
- The connection goes to exactly the address that was checked (DNS rebinding: a name with
  a TTL of 0 can answer the check with a public address and the connect with 127.0.0.1).
  The URL's name is kept where it belongs: the Host header, and TLS's SNI and certificate
  check (httpx's `sni_hostname` request extension).
- Redirects are followed by hand, each hop resolved, checked and pinned again.
- Bodies are read raw and decoded here, a slice at a time, so a body is never more than
  its cap in memory however well it compresses (a 250-byte gzip can inflate to 50 MB).
  One content coding at most (gzip or deflate); stacked or unknown codings are refused.
- Refusals say which host was refused but not which private address it resolved to.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fnmatch
import ipaddress
import socket
import ssl
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

USER_AGENT = "taskrunner-webscrape/0.1"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
        "168.63.129.16",  # Azure WireServer (a public address)
    )
)
# NAT64's well-known prefix carries the IPv4 address in its last 32 bits (RFC 6052); in
# the local-use prefix where it sits depends on the operator's prefix length, so every
# address there is treated as local.
NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")
NAT64_LOCAL_USE = ipaddress.ip_network("64:ff9b:1::/48")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # 0.0.0.0 reaches this host on Linux

# What `_Decoder` decodes. br and zstd would need a decoder with a bounded output; none is
# installed, so they are neither offered nor accepted.
CODINGS = {"gzip": zlib.MAX_WBITS | 16, "x-gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}
ACCEPT_ENCODING = "gzip, deflate"
DECODE_STEP = 64 * 1024  # most bytes decoded per zlib call


class FetchRefused(Exception):
    """The URL's host is not allowed (allowlist, or a non-public address)."""

    code = "FETCH_REFUSED"  # the task's error code (taskrunner.transitions.TaskErrorCode)
    retryable = False  # the same URL is refused again: never retried (taskrunner.retries)


class Unresolved(FetchRefused):
    """The URL's host does not resolve (now: a later try may succeed)."""


class TooManyRedirects(Exception):
    """More redirects than allowed, or a redirect loop."""

    code = "TOO_MANY_REDIRECTS"


class ResponseTooLarge(Exception):
    """The body passed its size cap."""

    code = "RESPONSE_TOO_LARGE"


class UnsupportedEncoding(Exception):
    """The body's Content-Encoding is stacked, or one this service does not decode."""

    code = "UNSUPPORTED_ENCODING"


class Reach(enum.IntEnum):
    """What an address reaches, from the least guarded to the most."""

    PUBLIC = 0  # any allowlisted name may resolve to it, `*` included
    PRIVATE = 1  # a pattern other than `*` matching the host, or the exact address
    LOCAL = 2  # loopback, link-local, unspecified, metadata: the exact host or address


def patterns(allowlist: str) -> list[str]:
    return [p.strip().lower() for p in allowlist.split(",") if p.strip()]


def _own_reach(address: IPAddress) -> Reach:
    """An address's reach by its own range, ignoring any IPv4 address it carries."""
    if (
        address in METADATA_ADDRESSES
        or address.is_loopback
        or address.is_link_local
        or address.is_unspecified
        or (isinstance(address, ipaddress.IPv4Address) and address in THIS_NETWORK)
    ):
        return Reach.LOCAL
    site_local = isinstance(address, ipaddress.IPv6Address) and address.is_site_local
    if (
        address.is_private
        or address.is_reserved
        or address.is_multicast
        or site_local  # deprecated, but Python calls fec0::/10 global
        or not address.is_global
    ):
        return Reach.PRIVATE
    return Reach.PUBLIC


def reach(address: IPAddress) -> Reach:
    """Which allowlist entries let a name resolve to `address` (see Reach). An IPv6 address
    that carries an IPv4 one reaches at least as far as that IPv4 address does."""
    if isinstance(address, ipaddress.IPv4Address):
        return _own_reach(address)
    if address.ipv4_mapped is not None:  # the socket talks IPv4 to it
        return _own_reach(address.ipv4_mapped)
    if address in NAT64_WELL_KNOWN:  # translated to that IPv4 address
        return _own_reach(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address in NAT64_LOCAL_USE:
        return Reach.LOCAL
    if address.sixtofour is not None:  # relayed to that IPv4 address
        return _own_reach(address.sixtofour)
    carried: list[ipaddress.IPv4Address] = []
    if address.teredo is not None:
        carried.extend(address.teredo)  # (server, client)
    if address in IPV4_COMPATIBLE:
        carried.append(ipaddress.IPv4Address(int(address)))
    return max([_own_reach(address), *map(_own_reach, carried)])


def is_public(address: IPAddress) -> bool:
    """Whether an address is an ordinary public one (not loopback, private, link-local,
    metadata, reserved, multicast or unspecified, nor an IPv6 form carrying such an IPv4
    address)."""
    return reach(address) is Reach.PUBLIC


def _is_exact(pattern: str) -> bool:
    return not any(c in pattern for c in "*?[")


def _names_address(pattern: str, address: IPAddress) -> bool:
    """Whether an allowlist entry is `address` itself (in any spelling)."""
    try:
        named = ipaddress.ip_address(pattern.strip("[]"))
    except ValueError:
        return False
    return _unmapped(named) == _unmapped(address)


def _unmapped(address: IPAddress) -> IPAddress:
    """::ffff:a.b.c.d as a.b.c.d (the same peer); any other address as itself."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _permits(host: str, address: IPAddress, allowed: list[str]) -> bool:
    """Whether the allowlist lets `host` (already matched by a pattern) reach `address`."""
    level = reach(address)
    if level is Reach.PUBLIC or any(_names_address(p, address) for p in allowed):
        return True
    if level is Reach.PRIVATE:
        return any(p != "*" and fnmatch.fnmatch(host, p) for p in allowed)
    return any(_is_exact(p) and p.strip("[]") == host for p in allowed)


async def resolve(host: str, port: int) -> list[IPAddress]:
    """The addresses `host` resolves to, in the resolver's order, each once (an IP literal
    resolves to itself, no DNS)."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found = (ipaddress.ip_address(info[4][0]) for info in infos)
    return list(dict.fromkeys(found))


def check_host(
    url: str, allowlist: str, setting: str = "FETCH_DOMAIN_ALLOWLIST"
) -> tuple[str, int, list[str]]:
    """What `check_url` refuses (FetchRefused) without resolving a name: the scheme, a
    host the allowlist (the setting named `setting`) does not match, an IP literal it does
    not allow. Else the host, the port and the allowlist's patterns."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise FetchRefused(f"{url!r}: the port is not a number from 0 to 65535") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchRefused(f"{url!r}: only http and https URLs with a host can be fetched")
    host = parts.hostname.lower()
    allowed = patterns(allowlist)
    if not any(fnmatch.fnmatch(host, p) for p in allowed):
        raise FetchRefused(f"host {host} is not in {setting} ({allowlist!r}); add it to fetch it")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host, port, allowed
    _refuse([literal], host, allowed, setting)
    return host, port, allowed


def _refuse(addresses: list[IPAddress], host: str, allowed: list[str], setting: str) -> None:
    refused = [a for a in addresses if not _permits(host, a, allowed)]
    if any(reach(a) is Reach.LOCAL for a in refused):
        raise FetchRefused(
            f"host {host} resolves to a loopback, link-local or cloud-metadata address; only "
            f"a {setting} entry that is this exact host or address (no wildcard) "
            "lets it through"
        )
    if refused:
        raise FetchRefused(
            f"host {host} resolves to a non-public address; allow it explicitly in "
            f"{setting} (a pattern naming it, not `*`) to fetch it"
        )


async def check_url(
    url: str, allowlist: str, setting: str = "FETCH_DOMAIN_ALLOWLIST"
) -> list[IPAddress]:
    """Refuse (FetchRefused) a URL this service must not fetch; else the addresses its
    host resolved to, all of them allowed: the only ones to connect to. `setting`: the
    allowlist's name, for the refusals' messages."""
    host, port, allowed = check_host(url, allowlist, setting)
    try:
        addresses = await resolve(host, port)
    except OSError as exc:
        raise Unresolved(f"host {host} does not resolve: {exc}") from None
    _refuse(addresses, host, allowed, setting)
    return addresses


@dataclass(frozen=True)
class Page:
    status_code: int
    final_url: str
    content_type: str
    body: bytes


@contextlib.asynccontextmanager
async def send_pinned(
    client: httpx.AsyncClient,
    url: httpx.URL,
    addresses: list[IPAddress],
    method: str = "GET",
    *,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[httpx.Response]:
    """Send `method` `url` to one of `addresses` (tried in order while connecting fails),
    never to whatever its name resolves to now; the answer streamed. The name stays in
    Host, SNI and the certificate check."""
    extensions = {}
    try:
        ipaddress.ip_address(url.host)
    except ValueError:
        extensions["sni_hostname"] = url.raw_host.decode("ascii")
    failure: httpx.ConnectError | None = None
    for address in addresses:
        request = client.build_request(
            method,
            url.copy_with(host=str(address)),
            headers={**(headers or {}), "Host": url.netloc.decode("ascii")},
            content=content,
            extensions=extensions,
        )
        try:
            response = await client.send(request, stream=True)
        except httpx.ConnectError as exc:
            failure = exc
            continue
        try:
            yield response
        finally:
            await response.aclose()
        return
    assert failure is not None  # check_url never returns an empty list
    raise failure


class _Decoder:
    """Decodes a body's content coding a slice at a time and keeps the slices (not one
    growing buffer, whose reallocations would hold two copies at once), so that however
    well the body compresses, no more than its cap plus one slice is ever held."""

    def __init__(self, response: httpx.Response, url: str, max_bytes: int) -> None:
        listed = response.headers.get_list("content-encoding", split_commas=True)
        codings = [c.strip().lower() for c in listed if c.strip().lower() not in ("", "identity")]
        if len(codings) > 1:
            raise UnsupportedEncoding(
                f"{url}: the body is encoded more than once (Content-Encoding: "
                f"{', '.join(codings)[:200]}); stacked encodings are refused"
            )
        self.url = url
        self.max_bytes = max_bytes
        self.parts: list[bytes] = []
        self.size = 0
        self.coding = codings[0] if codings else "identity"
        self.inflater: zlib._Decompress | None = None
        if codings:
            if self.coding not in CODINGS:
                raise UnsupportedEncoding(
                    f"{url}: Content-Encoding {self.coding[:100]!r} is not supported "
                    f"(supported: {ACCEPT_ENCODING}, identity)"
                )
            self.inflater = zlib.decompressobj(CODINGS[self.coding])
        self.fresh = True  # no input decoded yet: deflate may still turn out to be raw

    @property
    def ended(self) -> bool:
        """The compressed stream has ended: anything after it is ignored, unread."""
        return self.inflater is not None and self.inflater.eof

    def feed(self, data: bytes) -> None:
        if self.inflater is None:
            self._keep(data)
            return
        while data and not self.inflater.eof:
            limit = min(self.max_bytes - self.size + 1, DECODE_STEP)  # >= 1: 0 is "no limit"
            try:
                out = self.inflater.decompress(data, limit)
            except zlib.error as exc:
                if self.fresh and self.coding == "deflate":  # raw deflate, no zlib header
                    self.inflater = zlib.decompressobj(-zlib.MAX_WBITS)
                    self.fresh = False
                    continue
                raise httpx.DecodingError(
                    f"{self.url}: the body is not valid {self.coding} data: {exc}"
                ) from None
            self.fresh = False
            self._keep(out)
            data = self.inflater.unconsumed_tail

    def body(self) -> bytes:
        if self.inflater is not None:
            # All input was decoded by now (feed leaves no tail): only zlib's last bytes.
            self._keep(self.inflater.flush())
        return b"".join(self.parts)

    def _keep(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            self.parts.clear()  # now, not when the traceback (which holds self) is dropped
            raise ResponseTooLarge(
                f"{self.url}: body is over {self.max_bytes} bytes; raise maxBytes to fetch it"
            )
        self.parts.append(data)


async def _read(response: httpx.Response, url: str, max_bytes: int) -> bytes:
    """The decoded body, refused past `max_bytes` before it is any bigger in memory."""
    decoder = _Decoder(response, url, max_bytes)
    async for chunk in response.aiter_raw():
        decoder.feed(chunk)
        if decoder.ended:
            break
    return decoder.body()


async def fetch(
    url: str,
    *,
    allowlist: str,
    max_bytes: int,
    max_redirects: int,
    timeout_seconds: float = 15.0,
    verify: ssl.SSLContext | None = None,
) -> Page:
    """GET `url`, following at most `max_redirects` redirects, each hop checked and
    connected to the address checked. `verify`: the TLS context (None: httpx's default
    CAs; tests pass one that trusts their own)."""
    async with httpx.AsyncClient(
        follow_redirects=False,
        timeout=timeout_seconds,
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": ACCEPT_ENCODING},
        trust_env=False,
        verify=True if verify is None else verify,
        # Connections are pooled by address, not by name: a kept connection could carry a
        # later hop to another name on that address under the first name's TLS session.
        limits=httpx.Limits(max_keepalive_connections=0),
    ) as client:
        seen: set[str] = set()
        for _ in range(max_redirects + 1):
            addresses = await check_url(url, allowlist)
            seen.add(url)
            target = httpx.URL(url)
            async with send_pinned(client, target, addresses) as response:
                if response.is_redirect and "location" in response.headers:
                    location = urljoin(url, response.headers["location"])
                    if location in seen:
                        raise TooManyRedirects(f"redirect loop: {location} again")
                    url = location
                    continue
                return Page(
                    response.status_code,
                    str(target),
                    response.headers.get("content-type", ""),
                    await _read(response, url, max_bytes),
                )
    raise TooManyRedirects(f"more than {max_redirects} redirects starting from the given url")
