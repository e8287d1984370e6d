"""Helpers the benchmark scripts share: GraphQL over HTTP, stderr progress, percentiles."""

from __future__ import annotations

import math
import sys
from typing import Any

import httpx
import orjson


class GraphQLError(Exception):
    pass


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def gql(client: httpx.AsyncClient, url: str, query: str, **variables: Any) -> Any:
    """One GraphQL operation; its `data`, or GraphQLError with what went wrong."""
    try:
        response = await client.post(
            url, content=orjson.dumps({"query": query, "variables": variables})
        )
    except httpx.HTTPError as exc:
        raise GraphQLError(f"HTTP error talking to {url}: {exc!r}") from None
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise GraphQLError(f"HTTP {response.status_code}: {response.text[:500]}") from None
    if body.get("errors"):
        raise GraphQLError(f"GraphQL errors: {orjson.dumps(body['errors']).decode()}")
    if response.status_code != 200 or body.get("data") is None:
        raise GraphQLError(f"HTTP {response.status_code}: {response.text[:500]}")
    return body["data"]


def percentile(sorted_values: list[float], p: float, digits: int = 1) -> float | None:
    """Nearest-rank percentile; None when there is nothing to rank."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return round(sorted_values[rank - 1], digits)
