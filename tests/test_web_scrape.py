"""webScrape against a local HTTP server, and the SSRF guard on its own (no request ever
leaves the machine: refusals are tested on the address check, or with 127.0.0.2)."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from taskrunner.config import Settings
from taskrunner.fetch import FetchRefused, check_url, is_public
from tests.conftest import Stack, run_api, run_worker
from tests.test_lifecycle import finish, submit

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

    return Starlette(
        routes=[
            Route("/page", page),
            Route("/big", big),
            Route("/loop", loop),
            Route("/to-page", to_page),
            Route("/out", out),
        ]
    )


@pytest.fixture
async def site(settings: Settings) -> AsyncIterator[str]:
    async with run_api(settings, _site()) as url:
        yield url


@pytest.fixture
async def scraping(settings: Settings) -> AsyncIterator[Stack]:
    allowed = settings.model_copy(update={"fetch_domain_allowlist": "127.0.0.1"})
    async with run_api(allowed) as url, run_worker(allowed):
        yield await Stack.keyed(url, allowed)


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
        ("/big", {"maxBytes": 10_000}, "ResponseTooLarge"),
        ("/loop", {}, "TooManyRedirects"),
        ("/to-page", {"followRedirects": False}, "TooManyRedirects"),
        ("/out", {}, "FetchRefused"),  # the redirect leads to a host not allowlisted
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
    assert final["error"]["code"] == "FetchRefused"  # type: ignore[index]
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
