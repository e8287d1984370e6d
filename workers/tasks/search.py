"""Search the web (Brave Search) and return normalised, de-duplicated results.

`sources` names the search providers (`brave`; each must be in SEARCH_SOURCE_ALLOWLIST);
`verticals` the kinds of results each provider is asked for (Brave: web, news, videos).
At most SEARCH_MAX_RESULTS results come back, each
`{title, url, snippet, source, vertical, publishedAt}`. An identical search within
SEARCH_CACHE_TTL_SECONDS is answered from Redis (`cached: true`). Needs BRAVE_API_KEY.
Failures have their own codes: SEARCH_NOT_CONFIGURED, SEARCH_PROVIDER_ERROR.
"""

from __future__ import annotations

import json
from typing import Annotated

import httpx
from pydantic import BaseModel, Field, ValidationInfo, field_validator

from taskrunner.config import Settings
from taskrunner.search import (
    BRAVE,
    PROVIDERS,
    TIMEOUT_SECONDS,
    Result,
    connect,
    known_verticals,
    search,
)
from workers.task_context import TaskContext

NAME = "search"
MAX_SOURCES = 10  # room for repeats and spellings; duplicates are dropped
MAX_VERTICALS = 10
MAX_NAME_CHARS = 32


def allowed_sources(settings: Settings) -> list[str]:
    """SEARCH_SOURCE_ALLOWLIST as a list (lowercase, in its order, no blanks)."""
    names = (s.strip().lower() for s in settings.search_source_allowlist.split(","))
    return list(dict.fromkeys(n for n in names if n))


def _names(value: list[str]) -> list[str]:
    return list(dict.fromkeys(s.strip().lower() for s in value))


def _quoted(names: list[str]) -> str:
    return ", ".join(map(repr, names))


class Input(BaseModel):
    query: str = Field(min_length=1, max_length=500, description="What to search for.")
    sources: list[Annotated[str, Field(max_length=MAX_NAME_CHARS)]] = Field(
        default_factory=lambda: [BRAVE],
        validate_default=True,  # the default provider must be allowed too
        min_length=1,
        max_length=MAX_SOURCES,
        description="Search providers to query: brave (those in SEARCH_SOURCE_ALLOWLIST).",
    )
    verticals: list[Annotated[str, Field(max_length=MAX_NAME_CHARS)]] = Field(
        default_factory=lambda: ["web"],
        min_length=1,
        max_length=MAX_VERTICALS,
        description="Kinds of results to ask each provider for: web, news or videos.",
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
    def _providers(cls, value: list[str], info: ValidationInfo) -> list[str]:
        sources = _names(value)
        verticals = [s for s in sources if s in known_verticals() and s not in PROVIDERS]
        if verticals:
            what = "is a vertical" if len(verticals) == 1 else "are verticals"
            raise ValueError(
                f"{_quoted(verticals)} {what}, not a search provider: put "
                f"{'it' if len(verticals) == 1 else 'them'} in verticals and name the "
                f"provider in sources, e.g. sources: {json.dumps([BRAVE])}, "
                f"verticals: {json.dumps(verticals)}"
            )
        unknown = [s for s in sources if s not in PROVIDERS]
        if unknown:
            raise ValueError(
                f"{_quoted(unknown)} not a search provider; use {', '.join(PROVIDERS)}"
            )
        settings = (info.context or {}).get("settings")
        if isinstance(settings, Settings):
            allowed = allowed_sources(settings)
            refused = [s for s in sources if s not in allowed]
            if refused:
                raise ValueError(
                    f"{_quoted(refused)} not allowed; allowed sources: "
                    f"{', '.join(allowed) or 'none'} (set SEARCH_SOURCE_ALLOWLIST to change "
                    f"them, e.g. {','.join(PROVIDERS)})"
                )
        return sources

    @field_validator("verticals")
    @classmethod
    def _verticals(cls, value: list[str], info: ValidationInfo) -> list[str]:
        verticals = _names(value)
        # Those of the providers chosen (of every provider when `sources` was not valid).
        chosen = info.data.get("sources") or list(PROVIDERS)
        served = list(dict.fromkeys(v for name in chosen for v in PROVIDERS[name].verticals))
        unknown = [v for v in verticals if v not in served]
        if unknown:
            hint = " (a provider goes in sources)" if set(unknown) & set(PROVIDERS) else ""
            raise ValueError(
                f"{_quoted(unknown)} not a vertical of {', '.join(chosen)}; use "
                f"{', '.join(served)}{hint}"
            )
        return verticals


async def run(ctx: TaskContext, input: Input) -> dict[str, object]:
    settings = ctx.settings
    count = min(input.max_results or settings.search_max_results, settings.search_max_results)
    async with httpx.AsyncClient(timeout=TIMEOUT_SECONDS) as client:
        outcome = await search(
            connect(input.sources, settings, client),
            ctx.redis,
            query=input.query,
            verticals=input.verticals,
            recency_days=input.recency_days,
            count=count,
            cache_ttl_seconds=settings.search_cache_ttl_seconds,
        )
    results: list[Result] = outcome.results
    await ctx.log(
        f"{len(results)} results for {input.query!r} from {', '.join(sorted(input.sources))} "
        f"({', '.join(sorted(input.verticals))})" + (" (cached)" if outcome.cached else "")
    )
    return {
        "query": input.query,
        "results": results,
        "cached": outcome.cached,
        "sources": sorted(input.sources),
        "verticals": sorted(input.verticals),
    }
