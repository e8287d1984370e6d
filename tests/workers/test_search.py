"""search against a local fake of the Brave Search API (on 127.0.0.1: no request ever leaves
the machine): seed 002's request as written, providers (`sources`) and their verticals,
normalised and de-duplicated results, the Redis cache, the provider allowlist, a missing
key, provider errors, and the recency mapping."""

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

from taskrunner.config import Settings, load_settings
from taskrunner.errors import ConfigError
from taskrunner.search import (
    CACHE_PREFIX,
    PROVIDERS,
    BraveSearch,
    SearchProviderError,
    cache_key,
    freshness,
    merge,
    normalise_url,
    parse_brave,
    search,
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
        vertical = request.path_params["vertical"]
        seen.hits[vertical] += 1
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
        payload = {"web": WEB, "news": NEWS}.get(vertical)
        if payload is None:
            return JSONResponse({"error": {"detail": "no such endpoint"}}, status_code=404)
        return JSONResponse(payload)

    return Starlette(routes=[Route("/{vertical}/search", endpoint)])


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
        searching,
        query="  Python asyncio ",
        sources=["brave"],
        verticals=["web", "News"],
        recencyDays=5,
    )
    assert final["status"] == "SUCCEEDED", final
    result = final["result"]
    assert result["query"] == "Python asyncio"
    assert result["cached"] is False
    assert result["sources"] == ["brave"]
    assert result["verticals"] == ["news", "web"]
    # Round-robin over the (provider, vertical) pairs (sorted), first of each URL kept.
    assert result["results"] == [
        {
            "title": "Python 3.14 released",
            "url": "https://news.example.org/python-3-14",
            "snippet": "A new asyncio.",
            "source": "brave",
            "vertical": "news",
            "publishedAt": "2025-10-07T09:00:00+00:00",
        },
        {
            "title": "asyncio — Asynchronous I/O",
            "url": "https://docs.example.org/asyncio/",
            "snippet": "asyncio is a library to write concurrent code.",
            "source": "brave",
            "vertical": "web",
            "publishedAt": "2024-03-01T12:30:00+00:00",
        },
        {
            "title": "Same tutorial, from news",
            "url": "https://blog.example.org/asyncio-tutorial/",
            "snippet": "duplicate of a web result",
            "source": "brave",
            "vertical": "news",
            "publishedAt": None,
        },
    ]
    assert brave.hits == Counter({"web": 1, "news": 1})
    assert {p["q"] for p in brave.params} == {"Python asyncio"}
    assert {p["freshness"] for p in brave.params} == {"pw"}
    assert {p["count"] for p in brave.params} == {"20"}  # SEARCH_MAX_RESULTS


SEED_002 = """
mutation {
  submitTask(task: {search: {
    query: "open source task runner", sources: ["brave"], recencyDays: 7
  }}) { id input }
}"""


async def test_seed_002_request_runs_as_the_seed_writes_it(
    searching: Stack, brave: FakeBrave
) -> None:
    """Seed 002 submits {"query":"open source task runner","sources":["brave"],
    "recency_days":7} with SEARCH_SOURCE_ALLOWLIST=brave: `sources` names the provider."""
    assert Settings.model_fields["search_source_allowlist"].default == "brave"
    assert searching.settings.search_source_allowlist == "brave"
    submitted = (await searching.execute(SEED_002))["submitTask"]
    assert submitted["input"] == {
        "query": "open source task runner",
        "sources": ["brave"],
        "verticals": ["web"],
        "recency_days": 7,
        "max_results": None,
    }
    final = (await finish(searching, submitted["id"]))[-1]
    assert final["status"] == "SUCCEEDED", final
    result = final["result"]
    assert result["sources"] == ["brave"] and result["verticals"] == ["web"]
    assert [(r["source"], r["vertical"]) for r in result["results"]] == [("brave", "web")] * 2
    assert brave.hits == Counter({"web": 1})
    assert brave.params == [{"q": "open source task runner", "count": "20", "freshness": "pw"}]


async def test_max_results_and_search_max_results_cap_the_results(
    settings: Settings, brave: FakeBrave
) -> None:
    capped = _configured(settings, brave, search_max_results=2)
    async with run_api(capped) as url, run_worker(capped):
        stack = await Stack.keyed(url, capped)
        final = await run_search(stack, query="python", sources=["brave"], maxResults=50)
        assert final["status"] == "SUCCEEDED", final
        assert [r["url"] for r in final["result"]["results"]] == [
            "https://docs.example.org/asyncio/",
            "https://blog.example.org/asyncio-tutorial",
        ]
        final = await run_search(stack, query="python", maxResults=1)
        assert len(final["result"]["results"]) == 1
    assert [p["count"] for p in brave.params] == ["2", "1"]
    assert all("freshness" not in p for p in brave.params)


async def test_an_identical_search_is_answered_from_the_cache(
    searching: Stack, brave: FakeBrave, redis_url: str
) -> None:
    first = await run_search(searching, query="Python asyncio", verticals=["web", "news"])
    assert first["status"] == "SUCCEEDED" and first["result"]["cached"] is False
    assert brave.total == 2
    # Same search up to case, spacing and the order of verticals.
    second = await run_search(
        searching, query=" python  ASYNCIO", sources=["Brave"], verticals=["news", "web"]
    )
    assert second["status"] == "SUCCEEDED", second
    assert second["result"]["cached"] is True
    assert second["result"]["results"] == first["result"]["results"]
    assert brave.total == 2, "a cache hit must not reach the provider"

    client = Redis.from_url(redis_url)
    try:
        key = cache_key("python asyncio", ["brave"], ["web", "news"], None, 20)
        ttl = await client.ttl(key)
        assert 0 < ttl <= searching.settings.search_cache_ttl_seconds
    finally:
        await client.aclose()

    different = await run_search(searching, query="python asyncio", verticals=["web"])
    assert different["result"]["cached"] is False
    assert brave.total == 3


async def _refused(stack: Stack, spec: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(TransportQueryError) as err:
        await stack.execute(SUBMIT, task={"search": spec})
    (error,) = err.value.errors or []
    return dict(error)


async def test_a_source_outside_the_allowlist_is_rejected_at_submit(
    settings: Settings, brave: FakeBrave, engine: AsyncEngine
) -> None:
    closed = _configured(settings, brave, search_source_allowlist="")
    async with run_api(closed) as url:
        stack = await Stack.keyed(url, closed)
        error = await _refused(stack, {"query": "cats", "sources": ["brave"]})
        assert error["extensions"] == {"code": "BAD_INPUT", "field": "task.search.sources"}
        assert error["message"].startswith("task.search.sources: ")
        assert error["message"].endswith(
            "'brave' not allowed; allowed sources: none "
            "(set SEARCH_SOURCE_ALLOWLIST to change them, e.g. brave)"
        )
        # Without `sources`, the default provider (brave) is checked too.
        error = await _refused(stack, {"query": "cats"})
        assert error["extensions"]["field"] == "task.search.sources"
        assert "SEARCH_SOURCE_ALLOWLIST" in error["message"]
    async with engine.connect() as conn:
        assert await conn.scalar(sa.text("SELECT count(*) FROM task")) == 0
    assert brave.total == 0


async def test_verticals_in_sources_unknown_providers_and_verticals_are_rejected_at_submit(
    searching: Stack, brave: FakeBrave, engine: AsyncEngine
) -> None:
    # The old spelling, verticals in `sources`: refused, saying where they go.
    error = await _refused(searching, {"query": "cats", "sources": ["web", "news"]})
    assert error["extensions"] == {"code": "BAD_INPUT", "field": "task.search.sources"}
    assert error["message"].startswith("task.search.sources: ")
    assert error["message"].endswith(
        "'web', 'news' are verticals, not a search provider: put them "
        'in verticals and name the provider in sources, e.g. sources: ["brave"], '
        'verticals: ["web", "news"]'
    )
    error = await _refused(searching, {"query": "cats", "sources": ["brave", "videos"]})
    assert (
        "'videos' is a vertical" in error["message"] and "put it in verticals" in error["message"]
    )
    error = await _refused(searching, {"query": "cats", "sources": ["google"]})
    assert error["extensions"] == {"code": "BAD_INPUT", "field": "task.search.sources"}
    assert error["message"].startswith("task.search.sources: ")
    assert error["message"].endswith("'google' not a search provider; use brave")

    error = await _refused(searching, {"query": "cats", "verticals": ["web", "images"]})
    assert error["extensions"] == {"code": "BAD_INPUT", "field": "task.search.verticals"}
    assert error["message"].startswith("task.search.verticals: ")
    assert error["message"].endswith("'images' not a vertical of brave; use web, news, videos")
    error = await _refused(searching, {"query": "cats", "verticals": ["brave"]})
    assert error["extensions"]["field"] == "task.search.verticals"
    assert error["message"].endswith("(a provider goes in sources)")
    async with engine.connect() as conn:
        assert await conn.scalar(sa.text("SELECT count(*) FROM task")) == 0
    assert brave.total == 0


def test_input_validation_uses_the_settings_allowlist(settings: Settings) -> None:
    closed = settings.model_copy(update={"search_source_allowlist": ""})
    model = Input.model_validate(
        {"query": "q", "sources": [" BRAVE", "brave"], "verticals": ["VIDEOS", "web", "videos"]},
        context={"settings": settings},
    )
    assert (model.sources, model.verticals) == (["brave"], ["videos", "web"])
    default = Input.model_validate({"query": "q"}, context={"settings": settings})
    assert (default.sources, default.verticals) == (["brave"], ["web"])
    with pytest.raises(ValidationError, match="allowed sources: none"):
        Input.model_validate({"query": "q"}, context={"settings": closed})
    with pytest.raises(ValidationError, match="not a search provider; use brave"):
        Input.model_validate({"query": "q", "sources": ["images"]}, context={"settings": settings})
    with pytest.raises(ValidationError, match="'news' is a vertical"):
        Input.model_validate({"query": "q", "sources": ["news"]})
    with pytest.raises(ValidationError, match="'images' not a vertical of brave"):
        Input.model_validate({"query": "q", "verticals": ["images"]})
    with pytest.raises(ValidationError, match="blank"):
        Input.model_validate({"query": "   "})
    for bad in ({"sources": []}, {"verticals": []}, {"verticals": ["web"] * 11}):
        with pytest.raises(ValidationError):
            Input.model_validate({"query": "q", **bad})
    with pytest.raises(ValidationError):
        Input.model_validate({"query": "q" * 501})
    with pytest.raises(ValidationError):
        Input.model_validate({"query": "q", "recency_days": 0})
    with pytest.raises(ValidationError):
        Input.model_validate({"query": "q", "max_results": 201})


def test_search_source_allowlist_names_providers() -> None:
    """SEARCH_SOURCE_ALLOWLIST lists providers; a vertical or an unknown name stops start-up
    with a message naming the variable (an allowlist of verticals is the old meaning)."""

    def allowlist(value: str) -> str:
        return load_settings(_env_file=None, search_source_allowlist=value).search_source_allowlist

    assert allowlist(" Brave, brave,") == "brave"
    assert allowlist("") == ""
    with pytest.raises(ConfigError) as err:
        allowlist("web,news")
    assert "SEARCH_SOURCE_ALLOWLIST" in str(err.value)
    assert "'web' is a vertical, not a search provider" in str(err.value)
    assert "`verticals`" in str(err.value)
    with pytest.raises(ConfigError, match="'google' is not a search provider: use brave"):
        allowlist("brave,google")


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
    final = await run_search(searching, query="ratelimited")
    assert final["status"] == "FAILED", final
    assert final["error"]["code"] == "SEARCH_PROVIDER_ERROR"
    assert "HTTP 429" in final["error"]["message"]
    assert "Rate limited" in final["error"]["message"]
    assert TOKEN not in final["error"]["message"]


async def test_the_adapter_sends_the_token_and_reports_http_errors(brave: FakeBrave) -> None:
    good = BraveSearch(TOKEN, brave.url + "/")
    results = await good.search("q", "news", 400, 100)
    assert [(r["source"], r["vertical"]) for r in results] == [("brave", "news")] * 2
    assert brave.params[-1]["count"] == "50"  # the news endpoint's largest count
    assert brave.params[-1]["freshness"].endswith(f"to{datetime.now(UTC).date().isoformat()}")
    with pytest.raises(SearchProviderError, match="HTTP 401: bad token"):
        await BraveSearch("wrong", brave.url).search("q", "web", None, 5)
    with pytest.raises(SearchProviderError, match="HTTP 404"):
        await good.search("q", "videos", None, 5)
    with pytest.raises(SearchProviderError, match="no 'images' vertical"):
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
        {"title": "", "url": "u", "snippet": "", "source": "brave", "vertical": "news",
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
    key = cache_key(" A  b ", ["brave"], ["web", "news"], 3, 10)
    assert key.startswith(CACHE_PREFIX) and len(key) == len(CACHE_PREFIX) + 64
    assert key == cache_key("a b", ["brave", "brave"], ["news", "web", "news"], 3, 10)
    assert key != cache_key("a b", ["brave"], ["news", "web"], 4, 10)
    assert key != cache_key("a b", ["brave"], ["news"], 3, 10)
    assert key != cache_key("a b", ["brave", "other"], ["news", "web"], 3, 10)


async def test_search_queries_each_vertical_of_each_provider_and_caches_by_both(
    brave: FakeBrave, redis_url: str
) -> None:
    """The provider registry's mapping (name -> SearchProvider): every (provider, vertical)
    pair is queried, round-robin merged and de-duplicated; the cache key covers both."""
    assert set(PROVIDERS) == {"brave"}
    assert dict(PROVIDERS["brave"].verticals) == {"web": 20, "news": 50, "videos": 50}
    client = Redis.from_url(redis_url)
    try:
        adapter = BraveSearch(TOKEN, brave.url)
        both = {"mirror": adapter, "brave": adapter}  # two names, the same backend
        common: dict[str, Any] = {"recency_days": None, "count": 10, "cache_ttl_seconds": 60}
        outcome = await search(both, client, query="q", verticals=["web", "news"], **common)
        assert not outcome.cached
        assert brave.hits == Counter({"web": 2, "news": 2})  # 2 providers x 2 verticals
        assert [r["url"] for r in outcome.results] == [
            "https://news.example.org/python-3-14",
            "https://docs.example.org/asyncio/",
            "https://blog.example.org/asyncio-tutorial/",
        ]  # the mirror's copies are duplicates
        again = await search(both, client, query="Q", verticals=["news", "web"], **common)
        assert again.cached and again.results == outcome.results
        one = await search(
            {"brave": adapter}, client, query="q", verticals=["web", "news"], **common
        )
        assert not one.cached, "another set of providers is another search"
        assert brave.total == 6
        with pytest.raises(ValueError, match="none of brave serves images"):
            await search({"brave": adapter}, client, query="q", verticals=["images"], **common)
    finally:
        await client.aclose()
