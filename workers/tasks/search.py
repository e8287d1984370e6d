"""Search the web (Brave Search) and return normalised, de-duplicated results.

Sources are limited to SEARCH_SOURCE_ALLOWLIST; at most SEARCH_MAX_RESULTS results come
back, each `{title, url, snippet, source, publishedAt}`. An identical search within
SEARCH_CACHE_TTL_SECONDS is answered from Redis (`cached: true`). Needs BRAVE_API_KEY.
Failures have their own codes: SEARCH_NOT_CONFIGURED, SEARCH_PROVIDER_ERROR.
"""

from __future__ import annotations

from typing import Annotated

import httpx
from pydantic import BaseModel, Field, ValidationInfo, field_validator

from taskrunner.config import Settings
from taskrunner.search import (
    BRAVE_SOURCES,
    TIMEOUT_SECONDS,
    BraveSearch,
    Result,
    SearchNotConfigured,
    search,
)
from workers.task_context import TaskContext

NAME = "search"
MAX_SOURCES = 10  # room for repeats and spellings; duplicates are dropped
MAX_SOURCE_CHARS = 32


def allowed_sources(settings: Settings) -> list[str]:
    """SEARCH_SOURCE_ALLOWLIST as a list (lowercase, in its order, no blanks)."""
    names = (s.strip().lower() for s in settings.search_source_allowlist.split(","))
    return list(dict.fromkeys(n for n in names if n))


class Input(BaseModel):
    query: str = Field(min_length=1, max_length=500, description="What to search for.")
    sources: list[Annotated[str, Field(max_length=MAX_SOURCE_CHARS)]] = Field(
        default_factory=lambda: ["web"],
        min_length=1,
        max_length=MAX_SOURCES,
        description="Where to search: web, news or videos (those in SEARCH_SOURCE_ALLOWLIST).",
    )
    recency_days: int | None = Field(
        default=None,
        ge=1,
        le=3650,
        description="Only results published within this many days (1 to 3650).",
    )
    max_results: int | None = Field(
        default=None,
        ge=1,
        le=200,
        description="Most results to return (never more than SEARCH_MAX_RESULTS).",
    )

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        text = value.strip()
        if not text:
            raise ValueError("must not be blank")
        return text

    @field_validator("sources")
    @classmethod
    def _allowed(cls, value: list[str], info: ValidationInfo) -> list[str]:
        sources = list(dict.fromkeys(s.strip().lower() for s in value))
        settings = (info.context or {}).get("settings")
        if isinstance(settings, Settings):
            allowed = allowed_sources(settings)
            refused = [s for s in sources if s not in allowed]
            if refused:
                raise ValueError(
                    f"{', '.join(map(repr, refused))} not allowed; allowed sources: "
                    f"{', '.join(allowed) or 'none'} (set SEARCH_SOURCE_ALLOWLIST to change "
                    f"them, e.g. {','.join(BRAVE_SOURCES)})"
                )
        unknown = [s for s in sources if s not in BRAVE_SOURCES]
        if unknown:
            raise ValueError(
                f"{', '.join(map(repr, unknown))} not a source search supports; "
                f"use {', '.join(BRAVE_SOURCES)}"
            )
        return sources


async def run(ctx: TaskContext, input: Input) -> dict[str, object]:
    settings = ctx.settings
    if settings.brave_api_key is None or not settings.brave_api_key.get_secret_value():
        raise SearchNotConfigured(
            "BRAVE_API_KEY is not set: set it to a Brave Search API key "
            "(https://api-dashboard.search.brave.com) to use the search task"
        )
    count = min(input.max_results or settings.search_max_results, settings.search_max_results)
    async with httpx.AsyncClient(timeout=TIMEOUT_SECONDS) as client:
        provider = BraveSearch(
            settings.brave_api_key.get_secret_value(), settings.brave_api_url, client=client
        )
        outcome = await search(
            provider,
            ctx.redis,
            query=input.query,
            sources=input.sources,
            recency_days=input.recency_days,
            count=count,
            cache_ttl_seconds=settings.search_cache_ttl_seconds,
        )
    results: list[Result] = outcome.results
    await ctx.log(
        f"{len(results)} results for {input.query!r} from {', '.join(sorted(input.sources))}"
        + (" (cached)" if outcome.cached else "")
    )
    return {
        "query": input.query,
        "results": results,
        "cached": outcome.cached,
        "sources": sorted(input.sources),
    }
