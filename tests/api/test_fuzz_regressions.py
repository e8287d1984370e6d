"""Inputs the fuzz run (test_fuzz) once turned into INTERNAL errors or server
exceptions; each is now a clear answer."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
import sqlalchemy as sa
from gql.transport.exceptions import TransportQueryError
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.stack import Stack
from tests.support.tasks import WATCH, submit
from tests.support.waiting import eventually


async def _error(stack: Stack, query: str, **variables: object) -> dict[str, object]:
    with pytest.raises(TransportQueryError) as err:
        await stack.execute(query, **variables)
    assert err.value.errors
    (error,) = err.value.errors
    return error


async def test_a_nul_character_is_bad_input_wherever_it_comes(
    api: Stack, engine: AsyncEngine
) -> None:
    cases = [
        ('query($k: String!) { processed(scope: "s", key: $k) { processed } }', {"k": "\x00"}),
        ("query($l: String) { tasks(filter: {label: $l}) { edges { cursor } } }", {"l": "a\x00"}),
        (
            "mutation($m: String!) { submitTask(task: {echo: {message: $m}}) { id } }",
            {"m": "a\x00b"},
        ),
        (
            'mutation($o: TaskOptionsInput) { submitTask(task: {echo: {message: "x"}}, '
            "options: $o) { id } }",
            {"o": {"labels": ["a\x00b"]}},
        ),
    ]
    for query, variables in cases:
        error = await _error(api, query, **variables)
        assert error["extensions"] == {"code": "BAD_INPUT", "field": next(iter(variables))}
        assert "U+0000 (NUL)" in str(error["message"])
    literal = await _error(
        api, 'mutation { submitTask(task: {echo: {message: "a\\u0000b"}}) { id } }'
    )
    assert literal["extensions"] == {"code": "BAD_INPUT"}
    assert "U+0000 (NUL)" in str(literal["message"])
    async with engine.connect() as conn:
        assert await conn.scalar(sa.text("SELECT count(*) FROM task")) == 0


async def test_a_filter_time_without_a_time_zone_is_bad_input(api: Stack) -> None:
    query = 'query { tasks(filter: {createdAfter: "2000-01-01T00:00:00"}) { edges { cursor } } }'
    error = await _error(api, query)
    assert error["extensions"] == {"code": "BAD_INPUT", "field": "filter.createdAfter"}
    assert "2000-01-01T00:00:00Z" in str(error["message"])
    with pytest.raises(TransportQueryError) as err:
        await api.subscribe(
            'subscription { tasksUpdates(filter: {createdBefore: "2000-01-01T00:00:00"}) '
            "{ taskId } }",
            within=10,
        )
    assert err.value.errors
    assert err.value.errors[0]["extensions"]["field"] == "filter.createdBefore"


async def test_a_filter_time_before_year_1_in_utc_is_bad_input(api: Stack) -> None:
    """0001-01-01T00:00+05:30 is in year 0 in UTC, which PostgreSQL's driver cannot encode:
    BAD_INPUT on the field, not INTERNAL (found by the fuzzer in cancelTasks)."""
    early = "0001-01-01T00:00:00+05:30"
    for query in (
        f'query {{ tasks(filter: {{createdAfter: "{early}"}}) {{ edges {{ cursor }} }} }}',
        f'mutation {{ cancelTasks(filter: {{createdAfter: "{early}"}}) }}',
    ):
        error = await _error(api, query)
        assert error["extensions"] == {"code": "BAD_INPUT", "field": "filter.createdAfter"}
        assert "before year 1 in UTC" in str(error["message"])


async def test_a_result_beyond_64_bit_integers_is_published_and_streamed(stack: Stack) -> None:
    task_id = await submit(stack, {"sum": {"numbers": [1e20]}})
    events = await stack.subscribe(WATCH, id=task_id, within=10)
    assert [e["taskUpdates"]["status"] for e in events][-1] == "SUCCEEDED"
    params = {"query": WATCH.replace("$id: ID!", "").replace("$id", f'"{task_id}"')}
    async with (
        httpx.AsyncClient(base_url=stack.url, headers=stack.headers, timeout=10) as client,
        client.stream("GET", "/graphql/stream", params=params) as response,
    ):
        body = "".join([chunk async for chunk in response.aiter_text()])
    assert "100000000000000000000" in body and "event: complete" in body


async def test_a_server_sent_events_client_leaving_raises_nothing_on_the_server(
    api: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    params = {"query": "subscription { tasksUpdates { taskId } }"}
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            async with (
                httpx.AsyncClient(base_url=api.url, headers=api.headers, timeout=10) as client,
                client.stream("GET", "/graphql/stream", params=params) as response,
            ):
                assert response.status_code == 200
                reading = asyncio.create_task(anext(response.aiter_raw()))
                await asyncio.sleep(0.3)
                reading.cancel()

        async def noticed() -> bool:
            """the server noticed the disconnects: no subscription is open"""
            async with httpx.AsyncClient(base_url=api.url) as client:
                page = (await client.get("/metrics")).text
            return "\ntaskrunner_active_subscriptions 0.0\n" in page

        await eventually(noticed, within=10)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
