"""Limits: the `limits` query, rate limiting across api processes, query depth, aliases,
tokens, body and message sizes, task input size (query cost and the page and option bounds:
test_query_cost). Every refusal names the limit and
changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from gql.transport.exceptions import TransportError, TransportQueryError
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner.config import Settings
from taskrunner.embedded import free_port
from taskrunner.errors import LimitExceeded, RateLimited
from taskrunner.ratelimit import RateLimiter
from tests.support.processes import api_processes
from tests.support.servers import run_api
from tests.support.stack import Stack, make_key
from tests.support.subscriptions import close_code

SUBMIT = 'mutation { submitTask(task: {echo: {message: "x"}}) { id } }'
BATCH = """
mutation($n: Float!) { submitTasks(tasks: [
  {task: {sum: {numbers: [1]}}}, {task: {sum: {numbers: [$n]}}}
]) { id } }"""


async def _count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(sa.text("SELECT count(*) FROM task")) or 0)


async def _post(stack: Stack, body: Any, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30, headers=stack.headers) as client:
        return await client.post("/graphql", json=body, **kwargs)


async def test_limits_query_and_get_limits_answer_the_effective_limits(api: Stack) -> None:
    limits = (
        await api.execute(
            "{ limits { tasksPerMinute maxBatchSize taskMaxRuntimeSeconds taskMaxArtifactMb "
            "taskMaxMemoryMb maxTaskInputBytes maxRequestBytes maxQueryDepth "
            "fetchDomainAllowlist searchSourceAllowlist searchMaxResults maxQueryCost "
            "maxPageSize taskMaxRetries maxLabelsPerTask maxLabelLength "
            "maxIdempotencyKeyLength } }"
        )
    )["limits"]
    s = api.settings
    assert limits == {
        "maxQueryCost": 10_000,
        "maxPageSize": 100,
        "taskMaxRetries": 100,
        "maxLabelsPerTask": 20,
        "maxLabelLength": 200,
        "maxIdempotencyKeyLength": 200,
        "tasksPerMinute": s.tasks_per_minute,
        "maxBatchSize": s.max_batch_size,
        "taskMaxRuntimeSeconds": s.task_max_runtime_seconds,
        "taskMaxArtifactMb": s.task_max_artifact_mb,
        "taskMaxMemoryMb": s.task_max_memory_mb,
        "maxTaskInputBytes": s.max_task_input_bytes,
        "maxRequestBytes": s.max_request_bytes,
        "maxQueryDepth": s.max_query_depth,
        "fetchDomainAllowlist": ["*"],
        "searchSourceAllowlist": ["brave"],
        "searchMaxResults": s.search_max_results,
    }
    async with httpx.AsyncClient(base_url=api.url) as client:
        plain = (await client.get("/limits")).json()
    assert {k: plain[k] for k in limits} == limits


@pytest.fixture
async def limited(settings: Settings) -> AsyncIterator[tuple[str, str, Settings]]:
    """Two api processes sharing one Redis, with TASKS_PER_MINUTE=5."""
    async with api_processes(settings, 2, TASKS_PER_MINUTE="5") as (one, two):
        yield one, two, settings


async def test_the_sixth_submission_in_a_minute_is_rate_limited_across_two_api_processes(
    limited: tuple[str, str, Settings], engine: AsyncEngine
) -> None:
    one_url, two_url, settings = limited
    key = await make_key(settings)
    one, two = Stack(one_url, settings, key), Stack(two_url, settings, key)
    for stack in (one, two, one, two, one):
        await stack.execute(SUBMIT)
    response = await _post(two, {"query": SUBMIT})
    assert response.status_code == 429
    wait = int(response.headers["retry-after"])
    assert 1 <= wait <= 60
    (error,) = response.json()["errors"]
    assert error["extensions"] == {"code": "RATE_LIMITED", "retryAfterSeconds": wait}
    assert "TASKS_PER_MINUTE (5" in error["message"] and f"retry in {wait}s" in error["message"]
    assert await _count(engine) == 5  # the refused one left nothing behind
    # another key has its own budget; a batch counts each of its tasks
    other = one.as_key(await make_key(settings, "other"))
    for n in (2, 3):
        await other.execute(BATCH, n=n)
    with pytest.raises(TransportQueryError) as err:
        await other.execute(BATCH, n=4)  # 4 taken, 2 more is over 5
    assert err.value.errors and err.value.errors[0]["extensions"]["code"] == "RATE_LIMITED"
    await other.execute(SUBMIT)  # the fifth fits
    assert await _count(engine) == 10


async def test_a_query_deeper_than_the_limit_is_refused_naming_it(settings: Settings) -> None:
    shallow = settings.model_copy(update={"max_query_depth": 2})
    async with run_api(shallow) as url:
        stack = await Stack.keyed(url, shallow)
        ok = await stack.execute('{ processed(scope: "a", key: "b") { latestTask { id } } }')
        assert ok["processed"]["latestTask"] is None
        response = await _post(
            stack,
            {"query": '{ processed(scope: "a", key: "b") { latestTask { artifacts { id } } } }'},
        )
        # introspection is exempt: GraphiQL and codegen still load the schema
        schema = await _post(
            stack,
            {"query": "{ __schema { types { fields { type { ofType { ofType { name } } } } } } }"},
        )
    (error,) = response.json()["errors"]
    assert error["extensions"]["code"] == "LIMIT_EXCEEDED"
    assert "exceeds maximum operation depth of 2 (MAX_QUERY_DEPTH)" in error["message"]
    assert "errors" not in schema.json()


async def test_too_many_aliases_or_tokens_are_refused(api: Stack) -> None:
    aliases = "{ " + " ".join(f"a{i}: limits {{ maxBatchSize }}" for i in range(31)) + " }"
    response = await _post(api, {"query": aliases})
    (error,) = response.json()["errors"]
    assert error["extensions"]["code"] == "LIMIT_EXCEEDED"
    assert "MAX_QUERY_ALIASES" in error["message"]
    tokens = "{ limits { " + " ".join(["maxBatchSize"] * 10_001) + " } }"
    response = await _post(api, {"query": tokens})
    (error,) = response.json()["errors"]
    assert error["extensions"]["code"] == "LIMIT_EXCEEDED"
    assert "MAX_QUERY_TOKENS" in error["message"]


async def test_a_10_mb_body_is_refused_with_413_whether_sized_or_chunked(
    api: Stack, engine: AsyncEngine
) -> None:
    big = "x" * (10 * 1024 * 1024)
    sized = await _post(api, {"query": SUBMIT, "variables": {"pad": big}})

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"query": "' + SUBMIT.replace('"', '\\"').encode() + b'", "variables": {"p": "'
        for _ in range(10):
            yield b"x" * (1024 * 1024)
        yield b'"}}'

    async with httpx.AsyncClient(base_url=api.url, headers=api.headers) as client:
        chunked = await client.post(
            "/graphql", content=chunks(), headers={"content-type": "application/json"}
        )
    for response in (sized, chunked):
        assert response.status_code == 413
        (error,) = response.json()["errors"]
        assert error["extensions"]["code"] == "LIMIT_EXCEEDED"
        assert "MAX_REQUEST_BYTES (4194304 bytes)" in error["message"]
    assert await _count(engine) == 0


async def test_a_websocket_message_over_the_limit_closes_the_connection(api: Stack) -> None:
    huge = "x" * (5 * 1024 * 1024)
    with pytest.raises(TransportError) as closed:
        await api.subscribe(
            "subscription($id: ID!, $after: String) { taskUpdates(id: $id, after: $after) "
            "{ cursor } }",
            id="00000000-0000-0000-0000-000000000000",
            after=huge,
            within=10,
        )
    assert close_code(closed.value) == 1009  # "message too big"


async def test_a_task_input_over_the_cap_is_refused_naming_the_field(
    api: Stack, engine: AsyncEngine
) -> None:
    message = "x" * 70_000  # within echo's own bound, over MAX_TASK_INPUT_BYTES (65536)
    with pytest.raises(TransportQueryError) as err:
        await api.execute(
            "mutation($m: String!) { submitTask(task: {echo: {message: $m}}) { id } }", m=message
        )
    assert err.value.errors
    (error,) = err.value.errors
    assert error["extensions"] == {"code": "LIMIT_EXCEEDED", "field": "task.echo"}
    assert "MAX_TASK_INPUT_BYTES (65536)" in error["message"]
    batch = (
        'mutation($m: String!) { submitTasks(tasks: [{task: {echo: {message: "ok"}}}, '
        "{task: {echo: {message: $m}}}]) { id } }"
    )
    with pytest.raises(TransportQueryError) as err:
        await api.execute(batch, m=message)
    assert err.value.errors
    assert err.value.errors[0]["extensions"]["field"] == "tasks[1].task.echo"
    assert await _count(engine) == 0


async def test_a_syntax_error_is_bad_input(api: Stack) -> None:
    (error,) = (await _post(api, {"query": "{ limits { "})).json()["errors"]
    assert error["extensions"] == {"code": "BAD_INPUT"}
    assert error["message"].startswith("Syntax Error")


async def test_too_many_labels_are_refused(api: Stack) -> None:
    with pytest.raises(TransportQueryError) as err:
        await api.execute(
            'mutation($l: [String!]) { submitTask(task: {echo: {message: "x"}}, '
            "options: {labels: $l}) { id } }",
            l=[f"l{i}" for i in range(21)],
        )
    assert err.value.errors
    assert err.value.errors[0]["extensions"] == {"code": "BAD_INPUT", "field": "labels"}


async def test_subscriptions_per_connection_are_capped(settings: Settings) -> None:
    capped = settings.model_copy(update={"max_subscriptions_per_connection": 2})
    async with run_api(capped) as url:
        stack = await Stack.keyed(url, capped)
        task_id = (await stack.execute(SUBMIT))["submitTask"]["id"]
        watch = "subscription($id: ID!) { taskUpdates(id: $id) { cursor } }"
        async with stack.ws_client() as session, asyncio.timeout(10):
            from gql import GraphQLRequest

            open_ = [
                session.subscribe(GraphQLRequest(watch, variable_values={"id": task_id}))
                for _ in range(3)
            ]
            for agen in open_[:2]:
                await anext(agen)
            with pytest.raises(TransportQueryError) as err:
                await anext(open_[2])
            for agen in open_[:2]:
                await agen.aclose()
    assert err.value.errors
    assert err.value.errors[0]["extensions"]["code"] == "LIMIT_EXCEEDED"


async def test_the_limiter_counts_in_redis_and_lets_work_through_when_redis_is_away(
    redis_url: str,
) -> None:
    live = Redis.from_url(redis_url)
    gone = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    try:
        limiter = RateLimiter(live, 3)
        await limiter.take("k", 2)
        await limiter.take("k", 1)
        with pytest.raises(RateLimited) as err:
            await limiter.take("k", 1)
        assert 1 <= err.value.retry_after <= 60
        with pytest.raises(LimitExceeded):
            await limiter.take("other", 4)  # more than a minute's worth in one request
        await RateLimiter(gone, 3).take("k", 3)  # no Redis: counted nowhere, not refused
    finally:
        await live.aclose()
        await gone.aclose()
