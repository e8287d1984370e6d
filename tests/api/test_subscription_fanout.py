"""Fan-out of one task's events to many subscriptions: a live event is executed once per
shape and shared (api.fanout.executor.SharedEventExecutor), never across callers, base
URLs, documents or variables; identical backlog reads are done once (taskrunner.streams).
Also with the direct delivery of shared results (api.fanout.direct) and coalesced websocket
writes (api.fanout.websocket)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from graphql import MiddlewareManager
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine
from websockets.asyncio.client import connect

from api.context import Context
from api.fanout.events import shared_events
from api.fanout.executor import share_key
from taskrunner import journal
from taskrunner.changes import Change
from taskrunner.config import Settings
from taskrunner.events import Event, EventKind
from taskrunner.hub import EventHub
from taskrunner.keys import Principal
from taskrunner.states import TaskStatus
from taskrunner.streams import SharedReads, task_events
from tests.support.fanout import counting_direct_sends, run_direct_api
from tests.support.rows import new_task
from tests.support.servers import run_worker
from tests.support.stack import Stack, make_key
from tests.support.subscriptions import PROTOCOL
from tests.support.tasks import submit

FULL = """subscription($id: ID!, $withLine: Boolean!) {
  taskUpdates(id: $id) {
    __typename cursor taskId
    ... on StatusChanged { status }
    ... on LogAppended { line @include(if: $withLine) }
    ... on ArtifactAdded { artifact { name url } }
  }
}"""
SMALL = "subscription($id: ID!) { taskUpdates(id: $id) { cursor } }"
STORED = "query($id: ID!) { task(id: $id) { events { cursor } } }"

Subscriptions = dict[str, tuple[str, dict[str, Any]]]  # id -> (document, variables)


async def _follow(url: str, key: str, subscriptions: Subscriptions) -> dict[str, list[Any]]:
    """Run `subscriptions` on one websocket until each completes; their `taskUpdates`."""
    got: dict[str, list[Any]] = {sub: [] for sub in subscriptions}
    async with connect(url, subprotocols=[PROTOCOL]) as ws:
        init = {"type": "connection_init", "payload": {"Authorization": f"Bearer {key}"}}
        await ws.send(orjson.dumps(init).decode())
        assert orjson.loads(await ws.recv())["type"] == "connection_ack"
        for sub, (query, variables) in subscriptions.items():
            payload = {"query": query, "variables": variables}
            message = {"id": sub, "type": "subscribe", "payload": payload}
            await ws.send(orjson.dumps(message).decode())
        open_ = set(subscriptions)
        async for raw in ws:
            message = orjson.loads(raw)
            if message["type"] == "next":
                assert "errors" not in message["payload"], message
                got[message["id"]].append(message["payload"]["data"]["taskUpdates"])
            elif message["type"] in ("complete", "error"):
                assert message["type"] == "complete", message
                open_.discard(message["id"])
                if not open_:
                    return got
    raise AssertionError(f"the connection closed with {open_} still open")


async def _rest(stream: AsyncIterator[Event]) -> list[Event]:
    return [event async for event in stream]


def _shared_results(task_id: str, typename: str, artifact: str = "") -> list[dict[Any, Any]]:
    """The results shared on each live event of `task_id` of type `typename` (and of
    `artifact`, for ArtifactAdded)."""
    return [
        results
        for typed, results in shared_events.entries()
        if str(typed.task_id) == task_id
        and type(typed).__name__ == typename
        and (not artifact or typed.artifact.name == artifact)  # type: ignore[attr-defined]
    ]


async def _fan_out(url: str, settings: Settings) -> tuple[Any, ...]:
    """Subscriptions of three callers, two hosts, two documents and other variables to
    three tasks; what each got and the cursors stored for each task."""
    port = url.rsplit(":", 1)[1]
    here, there = f"ws://127.0.0.1:{port}/graphql", f"ws://localhost:{port}/graphql"
    owner_a = await Stack.keyed(url, settings, owner="fan-a")
    other_a_key = await make_key(settings, "fan-a")
    owner_b = await Stack.keyed(url, settings, owner="fan-b")
    admin_key = await make_key(settings, "ops", admin=True)
    later = {"delaySeconds": 2}  # every subscription is live before the task runs
    chatter = {"chatter": {"progressSteps": 0, "logLines": 5}}
    logs = await submit(owner_a, chatter, **later)
    report = await submit(owner_a, {"report": {"rows": 3}}, **later)
    theirs = await submit(owner_b, chatter, **later)
    full = {"id": logs, "withLine": True}
    runs = {
        # two subscriptions alike on one connection, one on another connection
        "a-here": _follow(
            here,
            owner_a.key or "",
            {
                "1": (FULL, full),
                "2": (FULL, full),
                "no-line": (FULL, {**full, "withLine": False}),
                "small": (SMALL, {"id": logs}),
                "report": (FULL, {"id": report, "withLine": True}),
            },
        ),
        "a-again": _follow(here, owner_a.key or "", {"1": (FULL, full)}),
        "a-other-key": _follow(here, other_a_key, {"1": (FULL, full)}),
        "a-there": _follow(
            there, owner_a.key or "", {"report": (FULL, {"id": report, "withLine": True})}
        ),
        "admin": _follow(here, admin_key, {"1": (FULL, full)}),
        "b": _follow(here, owner_b.key or "", {"1": (FULL, {"id": theirs, "withLine": True})}),
    }
    results = await asyncio.wait_for(asyncio.gather(*runs.values()), 60)
    got = dict(zip(runs, results, strict=True))
    stored = {
        task: [e["cursor"] for e in (await stack.execute(STORED, id=task))["task"]["events"]]
        for task, stack in ((logs, owner_a), (report, owner_a), (theirs, owner_b))
    }
    return got, stored, logs, report, theirs


@pytest.mark.parametrize("direct", [False, True], ids=["strawberry", "direct"])
async def test_shared_results_never_cross_callers_base_urls_documents_or_variables(
    settings: Settings, direct: bool
) -> None:
    with counting_direct_sends() as sent:
        async with run_direct_api(settings, direct) as url, run_worker(settings):
            got, stored, logs, report, theirs = await _fan_out(url, settings)
    # with api.fanout, the live events' shared results went past strawberry's pipeline
    # (the 7 subscriptions of `logs` on 5 live lines at least); without it, none did
    assert len(sent) >= 7 * 5 if direct else not sent

    a = got["a-here"]
    assert [e["cursor"] for e in a["1"]] == stored[logs]
    lines = [e["line"] for e in a["1"] if e["__typename"] == "LogAppended"]
    assert lines == [f"line {i} of 5" for i in range(1, 6)]
    for same in (a["2"], got["a-again"]["1"], got["a-other-key"]["1"], got["admin"]["1"]):
        assert same == a["1"]
    # other variables, another document: their own shape
    assert [e["cursor"] for e in a["no-line"]] == stored[logs]
    assert all("line" not in e for e in a["no-line"])
    assert a["small"] == [{"cursor": cursor} for cursor in stored[logs]]
    # another owner's stream has only its task's events
    assert [e["cursor"] for e in got["b"]["1"]] == stored[theirs]
    assert {e["taskId"] for e in got["b"]["1"]} == {theirs}
    # the artifact's link is made for the host each subscriber called (an async resolver)
    for run, host in (("a-here", "http://127.0.0.1:"), ("a-there", "http://localhost:")):
        events = got[run]["report"]
        assert [e["cursor"] for e in events] == stored[report]
        artifacts = [e["artifact"] for e in events if e["__typename"] == "ArtifactAdded"]
        (csv,) = [a for a in artifacts if a["name"] == "report.csv"]
        assert csv["url"].startswith(host)

    # and the sharing did happen: on each live log line, one result per shape and caller:
    # "1", "2" and "a-again" shared one; "no-line", "small", "a-other-key", "admin" had theirs
    shared = _shared_results(logs, "LogAppended")
    assert len(shared) == 5 and all(len(results) == 5 for results in shared)
    (on_artifact,) = _shared_results(report, "ArtifactAdded", "report.csv")
    assert len(on_artifact) == 2  # one per base URL
    assert all(len(results) == 1 for results in _shared_results(theirs, "LogAppended"))


def test_the_share_key_names_operation_variables_caller_and_base_url() -> None:
    class Executor:
        def __init__(self, context: object, variables: dict[str, Any], **other: Any) -> None:
            self.context_value = context
            self.variable_values = type("V", (), {"coerced": variables})()
            self.operation = other.get("operation", FULL)
            self.middleware_manager = other.get("middleware", MiddlewareManager())
            self.operation_extensions = other.get("extensions")

    owner = Principal(key_id=uuid.uuid4(), name="k", owner="o")

    def key(principal: Principal = owner, base: str = "http://a", **other: Any) -> Any:
        context = Context(services=None, principal=principal, base_url=base)  # type: ignore[arg-type]
        variables = other.pop("variables", {"id": "x"})
        return share_key(Executor(context, variables, **other))  # type: ignore[arg-type]

    assert key() == key()
    assert key(variables={"id": "x", "withLine": True}) == key(
        variables={"withLine": True, "id": "x"}
    )  # the order of variables does not matter
    different = [
        key(Principal(key_id=uuid.uuid4(), name="k", owner="o")),
        key(Principal(key_id=owner.key_id, name="k", owner="o", admin=True)),
        key(base="http://b"),
        key(variables={"id": "y"}),
        key(operation=SMALL),
    ]
    assert key() not in different and len(set(different)) == len(different)
    # never shared: resolver middleware, operation extensions, unserializable variables
    assert key(middleware=MiddlewareManager(lambda next_, *a, **k: next_(*a, **k))) is None
    assert key(extensions={"x": 1}) is None
    assert key(variables={"id": object()}) is None


async def test_concurrent_streams_of_a_task_read_its_backlog_once_and_stay_exact(
    engine: AsyncEngine, settings: Settings
) -> None:
    redis = Redis.from_url(settings.require_redis_url())
    hub = EventHub(redis)
    await hub.start()
    reads = 0
    original = SharedReads.__call__

    async def counting(self: SharedReads[Any], key: Any, read: Any) -> Any:
        async def counted() -> Any:
            nonlocal reads
            reads += 1
            return await read()

        return await original(self, key, counted)

    try:
        task_id = await new_task(engine)
        running = Change(task_id, EventKind.STATUS, {"status": "RUNNING"},
                                 to=TaskStatus.RUNNING)  # fmt: skip
        await journal.apply(engine, redis, [running])
        for n in range(3):
            line = Change(task_id, EventKind.LOG, {"level": "info", "line": str(n)})
            await journal.apply(engine, redis, [line])
        streams = [
            task_events(engine=engine, hub=hub, task_id=task_id, after_id=None, quiet_seconds=30)
            for _ in range(50)
        ]
        SharedReads.__call__ = counting  # type: ignore[method-assign]
        try:
            firsts = await asyncio.gather(*(anext(s) for s in streams))
        finally:
            SharedReads.__call__ = original  # type: ignore[method-assign]
        assert reads < 10  # instead of 50: the streams that asked together read once
        got = [[first] for first in firsts]
        for stream, events in zip(streams, got, strict=True):
            while len(events) < 5:
                events.append(await asyncio.wait_for(anext(stream), 5))
        done = Change(task_id, EventKind.STATUS, {"status": "SUCCEEDED"},
                              to=TaskStatus.SUCCEEDED)  # fmt: skip
        await journal.apply(engine, redis, [done])
        for stream, events in zip(streams, got, strict=True):
            events.extend(await asyncio.wait_for(_rest(stream), 5))
            assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6]
        # streams that joined one read got one object per event, noted as shared
        sharing = [events for events in got if hub.shared(events[0])]
        assert len(sharing) > 40
        assert all(a is b for a, b in zip(sharing[0][:5], sharing[1][:5], strict=True))
    finally:
        await hub.stop()
        await redis.aclose()
