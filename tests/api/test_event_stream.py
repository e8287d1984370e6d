"""Live event streams over real websockets: exact, ordered, fanned out across api
processes, bounded per subscriber, released on disconnect."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from gql import Client, GraphQLRequest
from gql.transport.exceptions import TransportQueryError
from gql.transport.websockets import WebsocketsTransport
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from api.app import create_app
from taskrunner import journal
from taskrunner.changes import Change
from taskrunner.config import Settings
from taskrunner.embedded import free_port
from taskrunner.errors import LimitExceeded
from taskrunner.events import EventKind
from taskrunner.hub import EventHub
from taskrunner.states import TaskStatus
from taskrunner.streams import task_events
from tests.support.environment import process_env
from tests.support.processes import spawn, stop, wait_ready
from tests.support.rows import new_task
from tests.support.servers import run_api, run_worker
from tests.support.stack import Stack
from tests.support.subscriptions import redis_channels, subscribe_many
from tests.support.tasks import EVENTS, WATCH, submit
from tests.support.waiting import eventually

ALL = """
subscription($filter: TaskFilter, $after: String) {
  tasksUpdates(filter: $filter, after: $after) {
    __typename cursor taskId
    ... on StatusChanged { status }
    ... on LogAppended { line }
    ... on ProgressReported { progress }
  }
}"""


async def test_100_progress_steps_and_500_log_lines_arrive_once_in_order(stack: Stack) -> None:
    task_id = await submit(stack, {"chatter": {"progressSteps": 100, "logLines": 500}})
    events = [e["taskUpdates"] for e in await stack.subscribe(WATCH, id=task_id, within=60)]
    cursors = [e["cursor"] for e in events]
    assert cursors == sorted(cursors) and len(set(cursors)) == len(cursors)
    lines = [e["line"] for e in events if e["__typename"] == "LogAppended"]
    assert lines == [f"line {i} of 500" for i in range(1, 501)]  # logging, captured
    progress = [e["progress"] for e in events if e["__typename"] == "ProgressReported"]
    assert 1 <= len(progress) <= 100 and progress[-1] == 1.0  # coalesced, latest kept
    assert progress == sorted(progress)
    assert events[-1]["status"] == "SUCCEEDED"
    stored = (await stack.execute(EVENTS, id=task_id))["task"]
    pages = [stored["events"]]
    while len(pages[-1]) == 100:  # a page of MAX_PAGE_SIZE: there may be more
        after = pages[-1][-1]["cursor"]
        pages.append((await stack.execute(EVENTS, id=task_id, after=after))["task"]["events"])
    assert [e["cursor"] for page in pages for e in page] == cursors
    assert stored["progress"] == 1.0


async def test_tasks_updates_streams_every_task_of_the_caller_with_filters(stack: Stack) -> None:
    async def collect(n: int, **variables: Any) -> list[dict[str, Any]]:
        return [e["tasksUpdates"] for e in await stack.subscribe(ALL, limit=n, **variables)]

    everything = asyncio.create_task(collect(6))
    echoes = asyncio.create_task(collect(3, filter={"type": ["echo"]}))
    failures = asyncio.create_task(collect(1, filter={"status": ["FAILED"]}))
    await asyncio.sleep(0.5)  # let the subscriptions start
    echo = await submit(stack, {"echo": {"message": "a"}}, labels=["x"])
    fail = await submit(stack, {"fail": {"message": "b"}})
    got = await asyncio.wait_for(everything, 20)
    by_task: dict[str, list[str]] = {}
    for e in got:
        by_task.setdefault(e["taskId"], []).append(e["__typename"])
    assert set(by_task) == {echo, fail}
    assert [e.get("status") for e in got if e["taskId"] == echo] == [
        "QUEUED", "RUNNING", "SUCCEEDED"
    ]  # fmt: skip
    assert {e["taskId"] for e in await echoes} == {echo}
    assert [(e["taskId"], e["status"]) for e in await failures] == [(fail, "FAILED")]

    # resuming from the middle yields exactly the rest
    rest = await collect(3, after=got[2]["cursor"])
    assert [e["cursor"] for e in rest] == [e["cursor"] for e in got[3:6]]


async def test_tasks_updates_refuses_an_unknown_cursor(api: Stack) -> None:
    with pytest.raises(TransportQueryError) as err:
        await api.subscribe(ALL, after="000000999999")
    assert err.value.errors is not None
    assert err.value.errors[0]["extensions"]["code"] == "BAD_INPUT"


async def test_a_subscriber_on_one_api_process_sees_a_task_submitted_on_another(
    settings: Settings,
) -> None:
    port = free_port()
    other = await spawn("api", env=process_env(settings, PORT=str(port)))
    try:
        async with run_api(settings) as url, run_worker(settings):
            here = await Stack.keyed(url, settings)
            there = await Stack.keyed(f"http://127.0.0.1:{port}", settings)
            await wait_ready(there.url, other)
            watching = asyncio.create_task(here.subscribe(ALL, limit=3))
            await asyncio.sleep(0.5)
            task_id = await submit(there, {"echo": {"message": "across"}})
            events = [e["tasksUpdates"] for e in await asyncio.wait_for(watching, 20)]
    finally:
        await stop(other)
    assert [(e["taskId"], e["status"]) for e in events] == [
        (task_id, "QUEUED"), (task_id, "RUNNING"), (task_id, "SUCCEEDED")
    ]  # fmt: skip


async def test_200_concurrent_subscribers_each_get_all_100_events_in_order(
    api: Stack, engine: AsyncEngine
) -> None:
    task_id = await submit(api, {"chatter": {"progressSteps": 0, "logLines": 97}})
    ready = asyncio.Event()
    watchers = asyncio.create_task(subscribe_many(api.url, api.key, task_id, 20, 10, ready))
    await asyncio.wait_for(ready.wait(), 30)  # all 200 have the QUEUED event
    async with run_worker(api.settings):
        results = await asyncio.wait_for(watchers, 60)
    stored = (await api.execute(EVENTS, id=task_id))["task"]["events"]
    expected = [e["cursor"] for e in stored]
    assert len(expected) == 100  # QUEUED, RUNNING, 97 lines, SUCCEEDED
    assert len(results) == 200
    assert all(cursors == expected for cursors in results)


async def test_disconnected_subscribers_release_their_redis_channels_within_2s(
    settings: Settings,
) -> None:
    app = create_app(settings)
    async with run_api(settings, app) as url:
        stack = await Stack.keyed(url, settings)
        hub: EventHub = app.state.services.hub
        before = await redis_channels(settings.require_redis_url())
        ids = [await submit(stack, {"sleep": {"seconds": 30}}) for _ in range(5)]
        ready = asyncio.Event()
        watchers = [
            asyncio.create_task(subscribe_many(url, stack.key, task_id, 4, 5, ready))
            for task_id in ids
        ]

        async def all_open() -> bool:
            return hub.streams == 100

        async def all_released() -> bool:
            """no stream open and the channels back to what they were"""
            channels = await redis_channels(settings.require_redis_url())
            return hub.streams == 0 and channels == before

        await eventually(all_open, 30)
        assert await redis_channels(settings.require_redis_url()) == before + 5
        for watcher in watchers:
            watcher.cancel()  # the clients disconnect
        await asyncio.gather(*watchers, return_exceptions=True)
        await eventually(all_released, 2)


async def test_a_subscriber_that_falls_behind_gets_limit_exceeded_and_resumes_without_gap(
    engine: AsyncEngine, settings: Settings
) -> None:
    redis = Redis.from_url(settings.require_redis_url())
    hub = EventHub(redis, buffer_events=20, stall_seconds=0.1)
    await hub.start()
    try:
        task_id = await new_task(engine)
        await journal.apply(engine, redis, [
            Change(task_id, EventKind.STATUS, {"status": "RUNNING"},
                           to=TaskStatus.RUNNING)
        ])  # fmt: skip
        stream = task_events(engine=engine, hub=hub, task_id=task_id, after_id=None,
                             quiet_seconds=30)  # fmt: skip
        got = [await anext(stream), await anext(stream)]  # QUEUED, RUNNING; then it stalls
        await asyncio.sleep(0.3)
        for n in range(30):  # more than its buffer of 20, published while it does not read
            line = Change(task_id, EventKind.LOG, {"level": "info", "line": str(n)})
            await journal.apply(engine, redis, [line])
        await asyncio.sleep(0.2)
        with pytest.raises(LimitExceeded) as err:
            async for event in stream:
                got.append(event)
        assert f'after: "{got[-1].cursor}"' in err.value.message
        resumed = task_events(engine=engine, hub=hub, task_id=task_id, after_id=got[-1].id,
                              quiet_seconds=0.2)  # fmt: skip
        while len(got) < 32:
            got.append(await asyncio.wait_for(anext(resumed), 5))
        await resumed.aclose()
    finally:
        await hub.stop()
        await redis.aclose()
    assert [e.seq for e in got] == list(range(1, 33))


async def test_the_older_graphql_ws_protocol_works_too(stack: Stack) -> None:
    task_id = await submit(stack, {"echo": {"message": "legacy"}})
    transport = WebsocketsTransport(  # gql's default protocol: "graphql-ws"
        url=stack.ws_url, init_payload=stack.headers
    )
    async with Client(transport=transport) as session:
        statuses = []
        agen = session.subscribe(GraphQLRequest(WATCH, variable_values={"id": task_id}))
        try:
            async for item in agen:
                statuses.append(item["taskUpdates"]["status"])
        finally:
            await agen.aclose()
    assert statuses == ["QUEUED", "RUNNING", "SUCCEEDED"]


async def test_a_connection_may_hold_only_so_many_subscriptions(settings: Settings) -> None:
    limited = settings.model_copy(update={"max_subscriptions_per_connection": 2})
    async with run_api(limited) as url:
        stack = await Stack.keyed(url, limited)
        ids = [await submit(stack, {"sleep": {"seconds": 30}}) for _ in range(3)]
        async with stack.ws_client() as session:
            agens = [
                session.subscribe(GraphQLRequest(WATCH, variable_values={"id": i})) for i in ids
            ]
            try:
                for agen in agens[:2]:
                    await asyncio.wait_for(anext(agen), 10)
                with pytest.raises(TransportQueryError) as err:
                    await asyncio.wait_for(anext(agens[2]), 10)
            finally:
                for agen in agens:
                    await agen.aclose()
    assert err.value.errors is not None
    assert err.value.errors[0]["extensions"]["code"] == "LIMIT_EXCEEDED"
    assert "MAX_SUBSCRIPTIONS_PER_CONNECTION" in err.value.errors[0]["message"]


async def _sse(
    stack: Stack, query: str, variables: dict[str, Any], headers: dict[str, str] | None = None
) -> list[tuple[str, str | None, str]]:
    """(event, id, data) of a Server-Sent Events subscription, until `complete`."""
    got: list[tuple[str, str | None, str]] = []
    params = {"query": query, "variables": json.dumps(variables)}
    async with (
        httpx.AsyncClient(base_url=stack.url, timeout=20) as client,
        client.stream(
            "GET", "/graphql/stream", params=params, headers={**stack.headers, **(headers or {})}
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        event: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line.startswith(":"):
                continue  # a ping
            if line:
                key, _, value = line.partition(":")
                event[key] = value.strip()
                continue
            if event:
                got.append((event.get("event", ""), event.get("id"), event.get("data", "")))
                if event.get("event") == "complete":
                    break
                event = {}
    return got


async def test_subscriptions_over_server_sent_events_resume_with_last_event_id(
    stack: Stack,
) -> None:
    task_id = await submit(stack, {"echo": {"message": "sse"}})
    events = await _sse(stack, WATCH, {"id": task_id})
    assert [e for e, _, _ in events] == ["next", "next", "next", "complete"]
    statuses = [json.loads(d)["data"]["taskUpdates"]["status"] for e, _, d in events[:3]]
    assert statuses == ["QUEUED", "RUNNING", "SUCCEEDED"]
    ids = [i for _, i, _ in events[:3]]
    assert ids == [json.loads(d)["data"]["taskUpdates"]["cursor"] for _, _, d in events[:3]]
    resumed = await _sse(stack, WATCH, {"id": task_id}, headers={"Last-Event-ID": str(ids[0])})
    assert [i for e, i, _ in resumed if e == "next"] == ids[1:]


async def test_server_sent_events_refuse_bad_requests_clearly(api: Stack) -> None:
    async with httpx.AsyncClient(base_url=api.url, headers=api.headers) as client:
        bad_json = await client.get("/graphql/stream", params={"query": "x", "variables": "{"})
        assert bad_json.status_code == 400
        assert bad_json.json()["errors"][0]["message"].startswith("variables:")
        not_found = await client.get(
            "/graphql/stream",
            params={
                "query": WATCH,
                "variables": json.dumps({"id": "00000000-0000-0000-0000-000000000000"}),
            },
        )
    # the subscription starts, then reports NOT_FOUND as its one result
    assert not_found.status_code == 200
    assert '"code":"NOT_FOUND"' in not_found.text
