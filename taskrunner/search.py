"""Web search for the `search` task: a provider interface, a registry of providers, the
Brave Search adapter, and a Redis cache in front of them.

Two words: a *source* is a search provider (`brave`), the thing SEARCH_SOURCE_ALLOWLIST
admits; a *vertical* is a kind of result a provider serves (Brave: `web`, `news`, `videos`,
each its own endpoint).

- `SearchProvider` is what a backend implements: one query against one of its verticals.
- `PROVIDERS` registers each provider by name: its verticals, and how to build it from the
  settings (`connect`).
- `BraveSearch` calls `{BRAVE_API_URL}/{vertical}/search` and normalises Brave's answers to
  `Result`s: `{title, url, snippet, source, vertical, publishedAt}`.
- `search()` queries every (provider, vertical) pair, merges them (round-robin,
  de-duplicated by URL), caps the count, and answers an identical search from Redis for
  SEARCH_CACHE_TTL_SECONDS.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypedDict
from urllib.parse import urlsplit, urlunsplit

import httpx
from redis.asyncio import Redis

if TYPE_CHECKING:  # taskrunner.config validates SEARCH_SOURCE_ALLOWLIST against PROVIDERS
    from taskrunner.config import Settings

CACHE_PREFIX = "taskrunner:search:"
BRAVE = "brave"
# The verticals Brave serves (one endpoint each), with the largest `count` each accepts.
BRAVE_VERTICALS: dict[str, int] = {"web": 20, "news": 50, "videos": 50}
# Brave's `freshness` presets, smallest first: (days covered, value).
FRESHNESS_WINDOWS: tuple[tuple[int, str], ...] = ((1, "pd"), (7, "pw"), (31, "pm"), (365, "py"))
TIMEOUT_SECONDS = 15.0
MAX_DETAIL_CHARS = 300


class SearchNotConfigured(Exception):
    """No search provider is configured (BRAVE_API_KEY is not set)."""

    code = "SEARCH_NOT_CONFIGURED"  # the task's error code (transitions.TaskErrorCode)


class SearchProviderError(Exception):
    """The search provider answered with an error, or could not be reached."""

    code = "SEARCH_PROVIDER_ERROR"


class Result(TypedDict):
    """One search result, the same whatever the provider."""

    title: str
    url: str
    snippet: str
    source: str  # the provider, e.g. "brave"
    vertical: str  # the provider's vertical it came from, e.g. "web" or "news"
    publishedAt: str | None


class SearchProvider(Protocol):
    """A search backend: one query against one of its verticals."""

    @property
    def verticals(self) -> Mapping[str, int]:
        """The verticals it serves, each with the most results one call may ask for."""
        ...

    async def search(
        self, query: str, vertical: str, recency_days: int | None, count: int
    ) -> list[Result]: ...


@dataclass(frozen=True)
class Outcome:
    results: list[Result]
    cached: bool


def freshness(recency_days: int | None, today: date | None = None) -> str | None:
    """Brave's `freshness` for "published in the last `recency_days` days": the smallest
    preset window covering it (pd, pw, pm, py), past a year an explicit date range."""
    if recency_days is None:
        return None
    if recency_days < 1:
        raise ValueError(f"recency_days must be at least 1, got {recency_days}")
    for days, value in FRESHNESS_WINDOWS:
        if recency_days <= days:
            return value
    end = today or datetime.now(UTC).date()
    return f"{(end - timedelta(days=recency_days)).isoformat()}to{end.isoformat()}"


def normalise_url(url: str) -> str:
    """The URL as compared for duplicates: no fragment, no trailing slash, lowercase host."""
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, parts.query, ""))


def _published_at(item: dict[str, Any]) -> str | None:
    """An ISO 8601 time (UTC) from Brave's `page_age` or `age`, or None when neither is a
    date (Brave's `age` is often relative, e.g. "3 days ago")."""
    for key in ("page_age", "age"):
        value = item.get(key)
        if not isinstance(value, str) or not value.strip():
            continue
        text = value.strip()
        parsed: datetime | None = None
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            for pattern in ("%B %d, %Y", "%b %d, %Y", "%d %B %Y", "%d %b %Y"):
                try:
                    parsed = datetime.strptime(text, pattern)
                    break
                except ValueError:
                    continue
        if parsed is not None:
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            return parsed.astimezone(UTC).isoformat()
    return None


def parse_brave(vertical: str, payload: Any) -> list[Result]:
    """Results from a Brave answer: `{"web": {"results": [...]}}` for web search, and
    `{"results": [...]}` for the news and videos endpoints."""
    if not isinstance(payload, dict):
        return []
    section = payload.get(vertical) if vertical == "web" else payload
    items = section.get("results") if isinstance(section, dict) else None
    results: list[Result] = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        url = item.get("url")
        if not isinstance(url, str) or not url.strip():
            continue
        results.append(
            Result(
                title=str(item.get("title") or ""),
                url=url.strip(),
                snippet=str(item.get("description") or ""),
                source=BRAVE,
                vertical=vertical,
                publishedAt=_published_at(item),
            )
        )
    return results


def _error_detail(response: httpx.Response) -> str:
    """Brave's own explanation of an error, when it gave one."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:MAX_DETAIL_CHARS].strip()
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        detail = error.get("detail") or error.get("code")
        if detail:
            return str(detail)[:MAX_DETAIL_CHARS]
    return ""


class BraveSearch:
    """The Brave Search API (https://api.search.brave.com/res/v1 by default)."""

    verticals: Mapping[str, int] = BRAVE_VERTICALS

    def __init__(
        self, api_key: str, base_url: str, *, client: httpx.AsyncClient | None = None
    ) -> None:
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.client = client

    async def search(
        self, query: str, vertical: str, recency_days: int | None, count: int
    ) -> list[Result]:
        if vertical not in BRAVE_VERTICALS:
            raise SearchProviderError(
                f"Brave Search has no {vertical!r} vertical; use one of "
                f"{', '.join(BRAVE_VERTICALS)}"
            )
        params: dict[str, str | int] = {
            "q": query,
            "count": max(1, min(count, BRAVE_VERTICALS[vertical])),
        }
        fresh = freshness(recency_days)
        if fresh is not None:
            params["freshness"] = fresh
        headers = {"X-Subscription-Token": self.api_key, "Accept": "application/json"}
        url = f"{self.base_url}/{vertical}/search"
        try:
            if self.client is not None:
                response = await self.client.get(url, params=params, headers=headers)
            else:
                async with httpx.AsyncClient(timeout=TIMEOUT_SECONDS) as client:
                    response = await client.get(url, params=params, headers=headers)
        except httpx.HTTPError as exc:
            raise SearchProviderError(
                f"Brave Search {vertical} search failed: {type(exc).__name__}: {exc}"
            ) from None
        if response.status_code >= 400:
            detail = _error_detail(response)
            raise SearchProviderError(
                f"Brave Search {vertical} search failed with HTTP {response.status_code}"
                + (f": {detail}" if detail else "")
            )
        try:
            payload = response.json()
        except ValueError:
            raise SearchProviderError(
                f"Brave Search {vertical} search answered HTTP {response.status_code} "
                "with a body that is not JSON"
            ) from None
        return parse_brave(vertical, payload)


def _connect_brave(settings: Settings, client: httpx.AsyncClient) -> SearchProvider:
    key = settings.brave_api_key
    if key is None or not key.get_secret_value():
        raise SearchNotConfigured(
            "BRAVE_API_KEY is not set: set it to a Brave Search API key "
            "(https://api-dashboard.search.brave.com) to use the search task"
        )
    return BraveSearch(key.get_secret_value(), settings.brave_api_url, client=client)


@dataclass(frozen=True)
class Provider:
    """A registered provider: the verticals it serves (vertical -> most results per call)
    and how to build it from the settings (raising SearchNotConfigured when it cannot)."""

    verticals: Mapping[str, int]
    connect: Callable[[Settings, httpx.AsyncClient], SearchProvider]


# Every search provider, by the name `sources` and SEARCH_SOURCE_ALLOWLIST use.
PROVIDERS: dict[str, Provider] = {BRAVE: Provider(BRAVE_VERTICALS, _connect_brave)}


def known_verticals() -> list[str]:
    """Every vertical some provider serves, in registry order."""
    return list(dict.fromkeys(v for p in PROVIDERS.values() for v in p.verticals))


def connect(
    names: Iterable[str], settings: Settings, client: httpx.AsyncClient
) -> dict[str, SearchProvider]:
    """The named providers (registered names), built from the settings."""
    return {name: PROVIDERS[name].connect(settings, client) for name in names}


def cache_key(
    query: str,
    sources: Iterable[str],
    verticals: Iterable[str],
    recency_days: int | None,
    count: int,
) -> str:
    """The Redis key of a search: the same for searches that differ only in the query's
    case and spacing, or in the order of their providers or verticals."""
    normalised = {
        "query": " ".join(query.split()).lower(),
        "sources": sorted(set(sources)),
        "verticals": sorted(set(verticals)),
        "recency_days": recency_days,
        "count": count,
    }
    digest = hashlib.sha256(
        json.dumps(normalised, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    return CACHE_PREFIX + digest


def merge(per_pair: Sequence[list[Result]], count: int) -> list[Result]:
    """Round-robin over the (provider, vertical) pairs' lists (so a cap keeps some of
    each), dropping URLs seen before, at most `count`."""
    seen: set[str] = set()
    merged: list[Result] = []
    for rank in range(max((len(r) for r in per_pair), default=0)):
        for results in per_pair:
            if rank >= len(results):
                continue
            key = normalise_url(results[rank]["url"])
            if key in seen:
                continue
            seen.add(key)
            merged.append(results[rank])
            if len(merged) >= count:
                return merged
    return merged


async def search(
    providers: Mapping[str, SearchProvider],
    redis: Redis,
    *,
    query: str,
    verticals: Sequence[str],
    recency_days: int | None,
    count: int,
    cache_ttl_seconds: int,
) -> Outcome:
    """Search each vertical of each provider that serves it, from the cache when an
    identical search ran within the TTL."""
    queried = [
        (name, vertical)
        for name in sorted(providers)
        for vertical in sorted(set(verticals))
        if vertical in providers[name].verticals
    ]
    if not queried:
        raise ValueError(
            f"none of {', '.join(sorted(providers))} serves {', '.join(sorted(set(verticals)))}"
        )
    key = cache_key(query, providers, verticals, recency_days, count)
    if cache_ttl_seconds > 0:
        hit = await redis.get(key)
        if hit is not None:
            return Outcome(results=json.loads(hit), cached=True)
    text = query.strip()
    calls = [
        asyncio.ensure_future(providers[name].search(text, vertical, recency_days, count))
        for name, vertical in queried
    ]
    try:
        per_pair = await asyncio.gather(*calls)
    except BaseException:  # one call failed (or we were cancelled): stop the others
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        raise
    results = merge(per_pair, count)
    if cache_ttl_seconds > 0:
        await redis.set(key, json.dumps(results), ex=cache_ttl_seconds)
    return Outcome(results=results, cached=False)
