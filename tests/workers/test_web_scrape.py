"""webScrape against a local HTTP server, and the SSRF guard on its own (no request ever
leaves the machine: refusals are tested on the address check, or with 127.0.0.2)."""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import re
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from taskrunner.config import Settings
from taskrunner.fetch import FetchRefused, check_url, is_public
from tests.support.dns import InstallDns, counting_server
from tests.support.servers import run_api, run_worker
from tests.support.stack import Stack
from tests.support.tasks import finish, submit
from tests.support.waiting import eventually

PAGE = """<!doctype html><html><head><title> Fixture page </title></head><body>
<h1>First heading</h1><p>text</p><h1>Second <em>heading</em></h1>
<a href="/about">about</a> <a href="about">relative</a> <a href="/about#team">same page</a>
<a href="http://127.0.0.1:9/elsewhere">absolute</a> <a href="mailto:x@example.org">mail</a>
<a href="/about">duplicate</a>
</body></html>"""


def _site() -> Starlette:
    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE)

    async def big(request: Request) -> Response:
        return HTMLResponse("<p>" + "x" * 50_000 + "</p>")

    async def loop(request: Request) -> Response:
        return RedirectResponse("/loop", status_code=302)

    async def to_page(request: Request) -> Response:
        return RedirectResponse("/page", status_code=301)

    async def out(request: Request) -> Response:
        port = request.url.port
        return RedirectResponse(f"http://127.0.0.2:{port}/page", status_code=302)

    async def encoded(request: Request) -> Response:
        """A body as sent with `?as=<Content-Encoding>`: the page, or a bomb (below)."""
        coding = request.query_params["as"]
        body = _encoded(request.query_params.get("what", "page"), coding)
        return Response(body, media_type="text/html", headers={"Content-Encoding": coding})

    return Starlette(
        routes=[
            Route("/page", page),
            Route("/big", big),
            Route("/loop", loop),
            Route("/to-page", to_page),
            Route("/out", out),
            Route("/encoded", encoded),
        ]
    )


BOMB_BYTES = 64 * 1024 * 1024  # what a bomb inflates to; maxBytes in these tests is 4 MB
MAX_BYTES = 4_000_000


def _compress(data: bytes, wbits: int, repeat: int = 1) -> bytes:
    """`data` repeated `repeat` times, compressed (31: gzip, 15: zlib deflate, -15: raw)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
    return b"".join(packer.compress(data) for _ in range(repeat)) + packer.flush()


@functools.cache
def _encoded(what: str, coding: str) -> bytes:
    """The page or a bomb, encoded as `coding` says (each layer of a stacked coding)."""
    layers = [c.strip() for c in coding.split(",") if c.strip() not in ("", "identity")]
    if what == "bomb":  # 64 MiB of zeros under the innermost layer: about 1000:1 each
        body = _compress(bytes(1024 * 1024), 31, BOMB_BYTES // (1024 * 1024))
        layers = layers[:-1]
    elif what == "raw":  # deflate without its zlib header, as some servers send it
        return _compress(PAGE.encode(), -15)
    else:
        body = PAGE.encode()
    for layer in reversed(layers):
        body = _compress(body, 15 if layer.lower() == "deflate" else 31)
    return body


@pytest.fixture
async def site(settings: Settings) -> AsyncIterator[str]:
    async with run_api(settings, _site()) as url:
        yield url


@contextlib.asynccontextmanager
async def scraping_with(settings: Settings, allowlist: str) -> AsyncIterator[Stack]:
    """The api and a worker (in this process) that fetch under `allowlist`."""
    allowed = settings.model_copy(update={"fetch_domain_allowlist": allowlist})
    async with run_api(allowed) as url, run_worker(allowed):
        yield await Stack.keyed(url, allowed)


@pytest.fixture
async def scraping(settings: Settings) -> AsyncIterator[Stack]:
    async with scraping_with(settings, "127.0.0.1") as stack:
        yield stack


async def scrape(stack: Stack, url: str, **extra: object) -> dict[str, object]:
    task_id = await submit(stack, {"webScrape": {"url": url, **extra}})
    return (await finish(stack, task_id))[-1]


async def test_title_h1s_and_links_are_extracted(scraping: Stack, site: str) -> None:
    final = await scrape(scraping, f"{site}/to-page")
    assert final["status"] == "SUCCEEDED", final
    result = final["result"]
    assert isinstance(result, dict)
    assert result["statusCode"] == 200
    assert result["finalUrl"] == f"{site}/page"
    assert result["contentType"].startswith("text/html")
    assert result["title"] == "Fixture page"
    assert result["h1s"] == ["First heading", "Second heading"]
    assert result["links"] == [f"{site}/about", "http://127.0.0.1:9/elsewhere"]


@pytest.mark.parametrize(
    ("path", "extra", "code"),
    [
        ("/big", {"maxBytes": 10_000}, "RESPONSE_TOO_LARGE"),
        ("/loop", {}, "TOO_MANY_REDIRECTS"),
        ("/to-page", {"followRedirects": False}, "TOO_MANY_REDIRECTS"),
        ("/out", {}, "FETCH_REFUSED"),  # the redirect leads to a host not allowlisted
    ],
)
async def test_failures_have_distinct_codes(
    scraping: Stack, site: str, path: str, extra: dict[str, object], code: str
) -> None:
    final = await scrape(scraping, f"{site}{path}", **extra)
    assert final["status"] == "FAILED"
    assert final["error"]["code"] == code, final  # type: ignore[index]


async def test_a_host_not_allowlisted_is_refused_before_any_request(
    scraping: Stack, site: str
) -> None:
    port = site.rsplit(":", 1)[1]
    final = await scrape(scraping, f"http://127.0.0.2:{port}/page")
    assert final["error"]["code"] == "FETCH_REFUSED"  # type: ignore[index]
    assert "FETCH_DOMAIN_ALLOWLIST" in final["error"]["message"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00:ec2::254", False),
        ("::ffff:10.0.0.1", False),  # IPv4 inside IPv6
        ("224.0.0.1", False),
    ],
)
def test_address_classification(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize(
    ("url", "allowlist", "refused"),
    [
        ("http://10.0.0.1/", "*", True),
        ("http://169.254.169.254/latest/meta-data/", "*", True),
        ("http://[fd00::1]/", "*", True),
        ("http://localhost/", "*", True),  # resolves to loopback
        ("http://192.168.0.1/", "192.168.0.1", False),  # named explicitly
        ("http://8.8.8.8/", "*", False),  # public: only classified, nothing is sent
        ("http://example.org/", "127.0.0.1", True),  # no pattern matches: no DNS either
        ("ftp://8.8.8.8/", "*", True),
    ],
)
async def test_check_url_refuses_without_sending(url: str, allowlist: str, refused: bool) -> None:
    if refused:
        with pytest.raises(FetchRefused):
            await check_url(url, allowlist)
    else:
        await check_url(url, allowlist)


# --- DNS rebinding ------------------------------------------------------------------------


async def test_a_name_rebound_after_the_check_is_fetched_from_the_checked_address(
    settings: Settings, site: str, dns: InstallDns
) -> None:
    """The name answers the check with 127.0.0.1 (allowed by its exact IP) and any later
    lookup with 127.0.0.2 (allowed by nothing; it stands for 169.254.169.254 or a local
    service, as a TTL-0 rebinding name would). The task must fetch from 127.0.0.1 and no
    connection may reach 127.0.0.2."""
    port = int(site.rsplit(":", 1)[1])
    stub = dns({"rebind.test": [["127.0.0.1"], ["127.0.0.2"]]})
    async with (
        counting_server("127.0.0.2", port) as rebound,
        scraping_with(settings, "127.0.0.1,*.test") as stack,
    ):
        final = await scrape(stack, f"http://rebind.test:{port}/page")
    assert rebound == [0], "a connection reached the address the name was rebound to"
    assert stub.lookups["rebind.test"] == 1
    assert final["status"] == "SUCCEEDED", final
    assert final["result"]["title"] == "Fixture page"  # type: ignore[index]
    assert final["result"]["finalUrl"] == f"http://rebind.test:{port}/page"  # type: ignore[index]


async def test_a_wildcard_pattern_does_not_let_a_name_reach_loopback(
    settings: Settings, site: str, dns: InstallDns
) -> None:
    port = int(site.rsplit(":", 1)[1])
    dns({"inside.test": [["127.0.0.1"]]})
    async with scraping_with(settings, "*.test") as stack:
        final = await scrape(stack, f"http://inside.test:{port}/page")
    assert final["status"] == "FAILED", final
    error = final["error"]
    assert isinstance(error, dict)
    assert error["code"] == "FETCH_REFUSED"
    assert "inside.test" in error["message"]
    assert "127.0.0.1" not in error["message"]  # where the name points stays unsaid


# --- content encodings and decompression bombs ----------------------------------------------


@pytest.mark.parametrize(
    ("coding", "what"),
    [
        ("gzip", "page"),
        ("x-gzip", "page"),
        ("GZIP", "page"),
        ("deflate", "page"),
        ("deflate", "raw"),
        ("identity", "page"),
        ("", "page"),
    ],
)
async def test_encoded_pages_are_decoded(
    scraping: Stack, site: str, coding: str, what: str
) -> None:
    final = await scrape(scraping, f"{site}/encoded?as={coding}&what={what}")
    assert final["status"] == "SUCCEEDED", final
    assert final["result"]["title"] == "Fixture page"  # type: ignore[index]


@pytest.mark.parametrize(
    "coding",
    [
        "gzip, gzip",  # stacked
        "deflate, gzip",
        "gzip, identity, gzip",
        "compress",  # unknown or not installed
        "br",
        "zstd",
    ],
)
async def test_stacked_and_unknown_encodings_are_refused(
    scraping: Stack, site: str, coding: str
) -> None:
    final = await scrape(scraping, f"{site}/encoded?as={coding}")
    assert final["status"] == "FAILED", final
    error = final["error"]
    assert isinstance(error, dict)
    assert error["code"] == "UNSUPPORTED_ENCODING", error
    assert "Content-Encoding" in error["message"]


def _peak_rss_since_reset() -> int:
    """This process's peak resident memory (VmHWM) since the last `_reset_peak_rss`."""
    status = Path("/proc/self/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert match, status
    return int(match.group(1)) * 1024


def _reset_peak_rss() -> int:
    """Restart the peak at the current RSS (Linux: clear_refs 5); returns that RSS."""
    Path("/proc/self/clear_refs").write_text("5")
    return _peak_rss_since_reset()


@pytest.mark.parametrize(
    ("coding", "code"),
    [
        ("gzip", "RESPONSE_TOO_LARGE"),  # 64 KiB on the wire, 64 MiB inflated
        ("gzip, gzip, gzip", "UNSUPPORTED_ENCODING"),  # the triple bomb: refused unread
    ],
)
async def test_a_decompression_bomb_fails_the_task_within_its_memory_cap(
    scraping: Stack, site: str, coding: str, code: str
) -> None:
    """The worker runs in this process: its peak memory while the bomb is fetched must stay
    under twice maxBytes above where it started, and it must run the next task."""
    _encoded("bomb", coding)  # built before the measurement
    # First-use costs paid here (the runner's traceback reads sources into linecache).
    warm = await scrape(scraping, f"{site}/encoded?as=gzip")
    assert warm["status"] == "SUCCEEDED", warm
    warm = await scrape(scraping, f"{site}/encoded?as=gzip", maxBytes=100)
    assert warm["error"]["code"] == "RESPONSE_TOO_LARGE", warm  # type: ignore[index]
    start = _reset_peak_rss()
    final = await scrape(scraping, f"{site}/encoded?as={coding}&what=bomb", maxBytes=MAX_BYTES)
    growth = _peak_rss_since_reset() - start
    assert growth < 2 * MAX_BYTES, f"the worker grew by {growth / 1e6:.1f} MB"
    assert final["status"] == "FAILED", final
    assert final["error"]["code"] == code, final  # type: ignore[index]
    after = await scrape(scraping, f"{site}/page")
    assert after["status"] == "SUCCEEDED", after


SCRAPE_WORKFLOW = """
mutation($w: WorkflowInput!) { submitWorkflow(workflow: $w) { id } }"""
SCRAPE_STEPS = """
query($id: ID!) {
  workflow(id: $id) {
    status steps { key task { status input result concurrencyKey } }
  }
}"""


async def test_a_step_scraping_a_url_bound_from_its_parent_gets_the_domain_key(
    scraping: Stack, site: str
) -> None:
    """The default per-domain concurrency key comes from the url, which a workflow step may
    take from its parent's result: it is the bound url's once the step is ready, not the
    placeholder's it was submitted with."""
    workflow = {
        "steps": [
            {"key": "find", "task": {"echo": {"message": f"{site}/page"}}},
            {
                "key": "scrape",
                "task": {"webScrape": {"url": "http://127.0.0.2/placeholder"}},
                "dependsOn": ["find"],
                "bind": [{"field": "url", "step": "find", "path": "message"}],
            },
        ]
    }
    workflow_id = (await scraping.execute(SCRAPE_WORKFLOW, w=workflow))["submitWorkflow"]["id"]
    found: dict[str, object] = {}

    async def ended() -> bool:
        """the workflow ended"""
        found.update((await scraping.execute(SCRAPE_STEPS, id=workflow_id))["workflow"])
        return found["status"] != "RUNNING"

    await eventually(ended, within=20)
    steps = {s["key"]: s["task"] for s in found["steps"]}  # type: ignore[attr-defined]
    scrape = steps["scrape"]
    assert found["status"] == "SUCCEEDED", steps
    assert scrape["input"]["url"] == f"{site}/page"
    assert scrape["concurrencyKey"] == "domain:127.0.0.1", scrape
    assert scrape["result"]["title"] == "Fixture page"
