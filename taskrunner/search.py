"""Web search for the `search` task: a provider interface, the Brave Search adapter, and a
Redis cache in front of it.

- `SearchProvider` is what a backend implements: one source (web, news, videos), one query.
- `BraveSearch` calls `{BRAVE_API_URL}/{source}/search` and normalises Brave's answers to
  `Result`s: `{title, url, snippet, source, publishedAt}`.
- `search()` queries every source, merges them (round-robin, de-duplicated by URL), caps the
  count, and answers an identical search from Redis for SEARCH_CACHE_TTL_SECONDS.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol, TypedDict
from urllib.parse import urlsplit, urlunsplit

import httpx
from redis.asyncio import Redis

CACHE_PREFIX = "taskrunner:search:"
# The sources Brave serves, with the largest `count` each endpoint accepts.
BRAVE_SOURCES: dict[str, int] = {"web": 20, "news": 50, "videos": 50}
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
    source: str
    publishedAt: str | None


class SearchProvider(Protocol):
    """A search backend: one query against one source."""

    async def search(
        self, query: str, source: str, recency_days: int | None, count: int
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


def parse_brave(source: str, payload: Any) -> list[Result]:
    """Results from a Brave answer: `{"web": {"results": [...]}}` for web search, and
    `{"results": [...]}` for the news and videos endpoints."""
    if not isinstance(payload, dict):
        return []
    section = payload.get(source) if source == "web" else payload
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
                source=source,
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

    def __init__(
        self, api_key: str, base_url: str, *, client: httpx.AsyncClient | None = None
    ) -> None:
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.client = client

    async def search(
        self, query: str, source: str, recency_days: int | None, count: int
    ) -> list[Result]:
        if source not in BRAVE_SOURCES:
            raise SearchProviderError(
                f"Brave Search has no {source!r} source; use one of {', '.join(BRAVE_SOURCES)}"
            )
        params: dict[str, str | int] = {
            "q": query,
            "count": max(1, min(count, BRAVE_SOURCES[source])),
        }
        fresh = freshness(recency_days)
        if fresh is not None:
            params["freshness"] = fresh
        headers = {"X-Subscription-Token": self.api_key, "Accept": "application/json"}
        url = f"{self.base_url}/{source}/search"
        try:
            if self.client is not None:
                response = await self.client.get(url, params=params, headers=headers)
            else:
                async with httpx.AsyncClient(timeout=TIMEOUT_SECONDS) as client:
                    response = await client.get(url, params=params, headers=headers)
        except httpx.HTTPError as exc:
            raise SearchProviderError(
                f"Brave Search {source} search failed: {type(exc).__name__}: {exc}"
            ) from None
        if response.status_code >= 400:
            detail = _error_detail(response)
            raise SearchProviderError(
                f"Brave Search {source} search failed with HTTP {response.status_code}"
                + (f": {detail}" if detail else "")
            )
        try:
            payload = response.json()
        except ValueError:
            raise SearchProviderError(
                f"Brave Search {source} search answered HTTP {response.status_code} "
                "with a body that is not JSON"
            ) from None
        return parse_brave(source, payload)


def cache_key(query: str, sources: Iterable[str], recency_days: int | None, count: int) -> str:
    """The Redis key of a search: the same for searches that differ only in the query's
    case and spacing, or in the order of their sources."""
    normalised = {
        "query": " ".join(query.split()).lower(),
        "sources": sorted(set(sources)),
        "recency_days": recency_days,
        "count": count,
    }
    digest = hashlib.sha256(
        json.dumps(normalised, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    return CACHE_PREFIX + digest


def merge(per_source: Sequence[list[Result]], count: int) -> list[Result]:
    """Round-robin over the sources' lists (so a cap keeps some of each), dropping URLs
    seen before, at most `count`."""
    seen: set[str] = set()
    merged: list[Result] = []
    for rank in range(max((len(r) for r in per_source), default=0)):
        for results in per_source:
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
    provider: SearchProvider,
    redis: Redis,
    *,
    query: str,
    sources: Sequence[str],
    recency_days: int | None,
    count: int,
    cache_ttl_seconds: int,
) -> Outcome:
    """Search every source (in sorted order, so the answer does not depend on the order
    they were given in), from the cache when an identical search ran within the TTL."""
    ordered = sorted(set(sources))
    key = cache_key(query, ordered, recency_days, count)
    if cache_ttl_seconds > 0:
        hit = await redis.get(key)
        if hit is not None:
            return Outcome(results=json.loads(hit), cached=True)
    text = query.strip()
    calls = [
        asyncio.ensure_future(provider.search(text, source, recency_days, count))
        for source in ordered
    ]
    try:
        per_source = await asyncio.gather(*calls)
    except BaseException:  # one source failed (or we were cancelled): stop the others
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        raise
    results = merge(per_source, count)
    if cache_ttl_seconds > 0:
        await redis.set(key, json.dumps(results), ex=cache_ttl_seconds)
    return Outcome(results=results, cached=False)
