"""search against a local fake of the Brave Search API (on 127.0.0.1: no request ever leaves
the machine): normalised and de-duplicated results, the Redis cache, the source allowlist,
a missing key, provider errors, and the recency mapping."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from gql.transport.exceptions import TransportQueryError
from pydantic import SecretStr, ValidationError
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from taskrunner.config import Settings
from taskrunner.search import (
    CACHE_PREFIX,
    BraveSearch,
    SearchProviderError,
    cache_key,
    freshness,
    merge,
    normalise_url,
    parse_brave,
)
from tests.support.servers import run_api, run_worker
from tests.support.stack import Stack
from tests.support.tasks import SUBMIT, finish, submit
from workers.tasks.search import Input

TOKEN = "test-brave-key"

WEB = {
    "type": "search",
    "query": {"original": "python asyncio"},
    "web": {
        "type": "search",
        "results": [
            {
                "title": "asyncio — Asynchronous I/O",
                "url": "https://docs.example.org/asyncio/",
                "description": "asyncio is a library to write concurrent code.",
                "page_age": "2024-03-01T12:30:00",
                "age": "March 1, 2024",
            },
            {
                "title": "asyncio again (trailing slash and fragment differ)",
                "url": "https://docs.example.org/asyncio#top",
                "description": "duplicate",
                "age": "2 days ago",
            },
            {
                "title": "A tutorial",
                "url": "https://blog.example.org/asyncio-tutorial",
                "description": "Learn asyncio.",
                "age": "3 days ago",
            },
            {"title": "no url: skipped", "description": "x"},
        ],
    },
}
NEWS = {
    "type": "news",
    "query": {"original": "python asyncio"},
    "results": [
        {
            "title": "Python 3.14 released",
            "url": "https://news.example.org/python-3-14",
            "description": "A new asyncio.",
            "age": "October 7, 2025",
            "page_age": "2025-10-07T09:00:00Z",
        },
        {
            "title": "Same tutorial, from news",
            "url": "https://blog.example.org/asyncio-tutorial/",
            "description": "duplicate of a web result",
        },
    ],
}


@dataclass
class FakeBrave:
    """What the fake Brave saw: requests per path, and each request's query parameters."""

    url: str = ""
    hits: Counter[str] = field(default_factory=Counter)
    params: list[dict[str, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.hits.values())


def _brave_app(seen: FakeBrave) -> Starlette:
    async def endpoint(request: Request) -> Response:
        source = request.path_params["source"]
        seen.hits[source] += 1
        seen.params.append(dict(request.query_params))
        if request.headers.get("x-subscription-token") != TOKEN:
            return JSONResponse(
                {"type": "ErrorResponse", "error": {"status": 401, "detail": "bad token"}},
                status_code=401,
            )
        if request.headers.get("accept") != "application/json":
            return JSONResponse({"error": {"detail": "Accept"}}, status_code=406)
        if request.query_params.get("q") == "ratelimited":
            return JSONResponse(
                {"type": "ErrorResponse", "error": {"status": 429, "detail": "Rate limited"}},
                status_code=429,
            )
        payload = {"web": WEB, "news": NEWS}.get(source)
        if payload is None:
            return JSONResponse({"error": {"detail": "no such endpoint"}}, status_code=404)
        return JSONResponse(payload)

    return Starlette(routes=[Route("/{source}/search", endpoint)])


@pytest.fixture
async def brave(settings: Settings) -> AsyncIterator[FakeBrave]:
    seen = FakeBrave()
    async with run_api(settings, _brave_app(seen)) as url:
        assert url.startswith("http://127.0.0.1:")
        seen.url = url
        yield seen


def _configured(settings: Settings, brave: FakeBrave, **extra: Any) -> Settings:
    return settings.model_copy(
        update={"brave_api_key": SecretStr(TOKEN), "brave_api_url": brave.url, **extra}
    )


@pytest.fixture
async def searching(settings: Settings, brave: FakeBrave) -> AsyncIterator[Stack]:
    configured = _configured(settings, brave)
    async with run_api(configured) as url, run_worker(configured):
        yield await Stack.keyed(url, configured)


async def run_search(stack: Stack, **spec: Any) -> dict[str, Any]:
    task_id = await submit(stack, {"search": spec})
    return (await finish(stack, task_id))[-1]


async def test_results_are_normalised_and_deduplicated_end_to_end(
    searching: Stack, brave: FakeBrave
) -> None:
    final = await run_search(
        searching, query="  Python asyncio ", sources=["web", "news"], recencyDays=5
    )
    assert final["status"] == "SUCCEEDED", final
    result = final["result"]
    assert result["query"] == "Python asyncio"
    assert result["cached"] is False
    assert result["sources"] == ["news", "web"]
    # Round-robin over the sources (sorted), first of each URL kept.
    assert result["results"] == [
        {
            "title": "Python 3.14 released",
            "url": "https://news.example.org/python-3-14",
            "snippet": "A new asyncio.",
            "source": "news",
            "publishedAt": "2025-10-07T09:00:00+00:00",
        },
        {
            "title": "asyncio — Asynchronous I/O",
            "url": "https://docs.example.org/asyncio/",
            "snippet": "asyncio is a library to write concurrent code.",
            "source": "web",
            "publishedAt": "2024-03-01T12:30:00+00:00",
        },
        {
            "title": "Same tutorial, from news",
            "url": "https://blog.example.org/asyncio-tutorial/",
            "snippet": "duplicate of a web result",
            "source": "news",
            "publishedAt": None,
        },
    ]
    assert brave.hits == Counter({"web": 1, "news": 1})
    assert {p["q"] for p in brave.params} == {"Python asyncio"}
    assert {p["freshness"] for p in brave.params} == {"pw"}
    assert {p["count"] for p in brave.params} == {"20"}  # SEARCH_MAX_RESULTS


async def test_max_results_and_search_max_results_cap_the_results(
    settings: Settings, brave: FakeBrave
) -> None:
    capped = _configured(settings, brave, search_max_results=2)
    async with run_api(capped) as url, run_worker(capped):
        stack = await Stack.keyed(url, capped)
        final = await run_search(stack, query="python", sources=["web"], maxResults=50)
        assert final["status"] == "SUCCEEDED", final
        assert [r["url"] for r in final["result"]["results"]] == [
            "https://docs.example.org/asyncio/",
            "https://blog.example.org/asyncio-tutorial",
        ]
        final = await run_search(stack, query="python", sources=["web"], maxResults=1)
        assert len(final["result"]["results"]) == 1
    assert [p["count"] for p in brave.params] == ["2", "1"]
    assert all("freshness" not in p for p in brave.params)


async def test_an_identical_search_is_answered_from_the_cache(
    searching: Stack, brave: FakeBrave, redis_url: str
) -> None:
    first = await run_search(searching, query="Python asyncio", sources=["web", "news"])
    assert first["status"] == "SUCCEEDED" and first["result"]["cached"] is False
    assert brave.total == 2
    # Same search up to case, spacing and the order of sources.
    second = await run_search(searching, query=" python  ASYNCIO", sources=["news", "web"])
    assert second["status"] == "SUCCEEDED", second
    assert second["result"]["cached"] is True
    assert second["result"]["results"] == first["result"]["results"]
    assert brave.total == 2, "a cache hit must not reach the provider"

    client = Redis.from_url(redis_url)
    try:
        key = cache_key("python asyncio", ["web", "news"], None, 20)
        ttl = await client.ttl(key)
        assert 0 < ttl <= searching.settings.search_cache_ttl_seconds
    finally:
        await client.aclose()

    different = await run_search(searching, query="python asyncio", sources=["web"])
    assert different["result"]["cached"] is False
    assert brave.total == 3


async def test_a_source_outside_the_allowlist_is_rejected_at_submit(
    searching: Stack, brave: FakeBrave, engine: AsyncEngine
) -> None:
    with pytest.raises(TransportQueryError) as err:
        await searching.execute(
            SUBMIT, task={"search": {"query": "cats", "sources": ["web", "images"]}}
        )
    (error,) = err.value.errors or []
    assert error["extensions"] == {"code": "BAD_INPUT", "field": "task.search.sources"}
    assert error["message"].startswith("task.search.sources:")
    assert "'images'" in error["message"] and "web, news" in error["message"]
    assert "SEARCH_SOURCE_ALLOWLIST" in error["message"]
    async with engine.connect() as conn:
        assert await conn.scalar(sa.text("SELECT count(*) FROM task")) == 0
    assert brave.total == 0


def test_source_validation_uses_the_settings_allowlist(settings: Settings) -> None:
    wider = settings.model_copy(update={"search_source_allowlist": "web, News,videos,images"})
    model = Input.model_validate(
        {"query": "q", "sources": ["VIDEOS", "web", "videos"]}, context={"settings": wider}
    )
    assert model.sources == ["videos", "web"]
    assert Input.model_validate({"query": "q"}).sources == ["web"]
    with pytest.raises(ValidationError, match="not a source search supports"):
        Input.model_validate({"query": "q", "sources": ["images"]}, context={"settings": wider})
    with pytest.raises(ValidationError, match="allowed sources: web, news"):
        Input.model_validate({"query": "q", "sources": ["videos"]}, context={"settings": settings})
    with pytest.raises(ValidationError, match="blank"):
        Input.model_validate({"query": "   "})
    with pytest.raises(ValidationError):
        Input.model_validate({"query": "q", "sources": []})
    with pytest.raises(ValidationError):
        Input.model_validate({"query": "q" * 501})
    with pytest.raises(ValidationError):
        Input.model_validate({"query": "q", "recency_days": 0})
    with pytest.raises(ValidationError):
        Input.model_validate({"query": "q", "max_results": 201})


async def test_without_an_api_key_the_task_fails_search_not_configured(
    stack: Stack, brave: FakeBrave
) -> None:
    assert stack.settings.brave_api_key is None
    final = await run_search(stack, query="anything")
    assert final["status"] == "FAILED", final
    assert final["error"]["code"] == "SEARCH_NOT_CONFIGURED"
    assert "BRAVE_API_KEY" in final["error"]["message"]
    assert brave.total == 0


async def test_a_provider_error_fails_the_task_with_its_status_code(
    searching: Stack, brave: FakeBrave
) -> None:
    final = await run_search(searching, query="ratelimited", sources=["web"])
    assert final["status"] == "FAILED", final
    assert final["error"]["code"] == "SEARCH_PROVIDER_ERROR"
    assert "HTTP 429" in final["error"]["message"]
    assert "Rate limited" in final["error"]["message"]
    assert TOKEN not in final["error"]["message"]


async def test_the_adapter_sends_the_token_and_reports_http_errors(brave: FakeBrave) -> None:
    good = BraveSearch(TOKEN, brave.url + "/")
    results = await good.search("q", "news", 400, 100)
    assert [r["source"] for r in results] == ["news", "news"]
    assert brave.params[-1]["count"] == "50"  # the news endpoint's largest count
    assert brave.params[-1]["freshness"].endswith(f"to{datetime.now(UTC).date().isoformat()}")
    with pytest.raises(SearchProviderError, match="HTTP 401: bad token"):
        await BraveSearch("wrong", brave.url).search("q", "web", None, 5)
    with pytest.raises(SearchProviderError, match="HTTP 404"):
        await good.search("q", "videos", None, 5)
    with pytest.raises(SearchProviderError, match="no 'images' source"):
        await good.search("q", "images", None, 5)


def test_recency_days_map_to_the_smallest_covering_freshness_window() -> None:
    assert freshness(None) is None
    assert [freshness(d) for d in (1, 2, 7, 8, 30, 31, 32, 364, 365)] == [
        "pd", "pw", "pw", "pm", "pm", "pm", "py", "py", "py"
    ]  # fmt: skip
    today = date(2026, 5, 10)
    assert freshness(366, today) == "2025-05-09to2026-05-10"
    assert freshness(3650, today) == "2016-05-12to2026-05-10"
    with pytest.raises(ValueError):
        freshness(0)


def test_parsing_normalising_and_merging() -> None:
    web = parse_brave("web", WEB)
    assert [r["url"] for r in web] == [
        "https://docs.example.org/asyncio/",
        "https://docs.example.org/asyncio#top",
        "https://blog.example.org/asyncio-tutorial",
    ]
    assert [r["publishedAt"] for r in web] == ["2024-03-01T12:30:00+00:00", None, None]
    assert parse_brave("news", {"results": [{"url": "u", "age": "March 1, 2024"}]}) == [
        {"title": "", "url": "u", "snippet": "", "source": "news",
         "publishedAt": "2024-03-01T00:00:00+00:00"}
    ]  # fmt: skip
    assert parse_brave("web", {"type": "search"}) == []
    assert parse_brave("news", ["not", "an", "object"]) == []
    assert normalise_url("HTTPS://Example.org/a/#x") == normalise_url("https://example.org/a")
    assert normalise_url("https://example.org/a?b=1") != normalise_url("https://example.org/a")
    assert [r["url"] for r in merge([web, web], 10)] == [
        "https://docs.example.org/asyncio/",
        "https://blog.example.org/asyncio-tutorial",
    ]
    assert merge([], 5) == []
    key = cache_key(" A  b ", ["web", "news"], 3, 10)
    assert key.startswith(CACHE_PREFIX) and len(key) == len(CACHE_PREFIX) + 64
    assert key == cache_key("a b", ["news", "web", "news"], 3, 10)
    assert key != cache_key("a b", ["news", "web"], 4, 10)
