"""Bounds on open streams: MAX_SUBSCRIPTIONS_PER_KEY across connections, Server-Sent Events
and api replicas (counted in Redis, and not leaked by a replica that was killed), and
websockets that never send connection_init are closed."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import signal
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from gql import GraphQLRequest
from gql.transport.exceptions import TransportQueryError
from redis.asyncio import Redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from taskrunner.config import Settings
from taskrunner.embedded import free_port
from tests.support.environment import process_env
from tests.support.processes import spawn, stop, wait_ready
from tests.support.servers import run_api
from tests.support.stack import Stack
from tests.support.tasks import WATCH, submit
from tests.support.waiting import eventually


@contextlib.asynccontextmanager
async def _watching(stack: Stack, task_id: str, count: int) -> AsyncIterator[None]:
    """`count` taskUpdates subscriptions on one websocket, open (first event received)."""
    async with stack.ws_client() as session:
        agens = [
            session.subscribe(GraphQLRequest(WATCH, variable_values={"id": task_id}))
            for _ in range(count)
        ]
        try:
            for agen in agens:
                await asyncio.wait_for(anext(agen), 10)
            yield
        finally:
            for agen in agens:
                await agen.aclose()


async def _refused(stack: Stack, task_id: str) -> dict[str, Any]:
    """The error a new subscription gets (it must get one)."""
    with pytest.raises(TransportQueryError) as err:
        await stack.subscribe(WATCH, id=task_id, limit=1, within=10)
    assert err.value.errors
    error = err.value.errors[0]
    assert isinstance(error, dict)
    return error


async def _opens(stack: Stack, task_id: str) -> bool:
    """Whether a new subscription of the stack's key opens (and gets its first event)."""
    try:
        await stack.subscribe(WATCH, id=task_id, limit=1, within=10)
    except TransportQueryError as err:
        assert err.errors and err.errors[0]["extensions"]["code"] == "LIMIT_EXCEEDED", err
        return False
    return True


async def _opens_soon(stack: Stack, task_id: str, within: float = 3) -> None:
    """A new subscription opens within `within` seconds (a closed one's slot is released
    once the server has seen it close)."""
    started = asyncio.get_running_loop().time()
    while not await _opens(stack, task_id):
        assert asyncio.get_running_loop().time() - started < within, "no slot came free"
        await asyncio.sleep(0.1)


async def _sse_open(stack: Stack, task_id: str, opened: asyncio.Event) -> None:
    """A Server-Sent Events subscription held open until cancelled."""
    params = {"query": WATCH, "variables": json.dumps({"id": task_id})}
    async with (
        httpx.AsyncClient(base_url=stack.url, timeout=30, headers=stack.headers) as client,
        client.stream("GET", "/graphql/stream", params=params) as response,
    ):
        async for line in response.aiter_lines():
            if line.startswith("data:") and "taskUpdates" in line:
                opened.set()


async def test_open_streams_per_key_are_bounded_across_connections_sse_and_replicas(
    settings: Settings,
) -> None:
    limited = settings.model_copy(update={"max_subscriptions_per_key": 3})
    async with run_api(limited) as url_a, run_api(limited) as url_b:
        alice_a = await Stack.keyed(url_a, limited)
        alice_b = Stack(url_b, limited, alice_a.key)
        bob_b = await Stack.keyed(url_b, limited, owner="bob")
        limits = (await alice_a.execute("{ limits { maxSubscriptionsPerKey } }"))["limits"]
        assert limits == {"maxSubscriptionsPerKey": 3}
        task_id = await submit(alice_a, {"sleep": {"seconds": 30}})  # no worker: stays open
        theirs = await submit(bob_b, {"sleep": {"seconds": 30}})
        opened = asyncio.Event()
        sse = asyncio.create_task(_sse_open(alice_b, task_id, opened))
        try:
            await asyncio.wait_for(opened.wait(), 10)
            async with _watching(alice_a, task_id, 2):  # 2 on replica A + 1 SSE on B
                error = await _refused(alice_b, task_id)
                assert error["extensions"]["code"] == "LIMIT_EXCEEDED"
                assert "MAX_SUBSCRIPTIONS_PER_KEY" in error["message"]
                assert "3 open subscriptions" in error["message"]
                assert (await _refused(alice_a, task_id))["extensions"]["code"] == "LIMIT_EXCEEDED"
                assert await _opens(bob_b, theirs)  # another key has its own count
            # closed on A: their slots are free again, on either replica
            await _opens_soon(alice_b, task_id)
            async with _watching(alice_b, task_id, 2):
                assert not await _opens(alice_a, task_id)
        finally:
            sse.cancel()
            await asyncio.gather(sse, return_exceptions=True)
        # every slot is released once the server has seen its stream end, SSE included
        await eventually(functools.partial(_no_leases, limited), 3)
        async with _watching(alice_a, task_id, 3):
            pass


async def _no_leases(settings: Settings) -> bool:
    """no subscription holds a lease in Redis"""
    redis = Redis.from_url(settings.require_redis_url())
    try:
        keys = [k async for k in redis.scan_iter("taskrunner:subscriptions:*")]
        return sum([await redis.zcard(k) for k in keys]) == 0
    finally:
        await redis.aclose()


async def test_streams_of_a_killed_replica_stop_counting_after_their_lease(
    settings: Settings,
) -> None:
    env = {"MAX_SUBSCRIPTIONS_PER_KEY": "2", "SUBSCRIPTION_LEASE_SECONDS": "2"}
    limited = settings.model_copy(
        update={"max_subscriptions_per_key": 2, "subscription_lease_seconds": 2.0}
    )
    port = free_port()
    proc = await spawn("api", env=process_env(settings, PORT=str(port), **env))
    try:
        doomed = await Stack.keyed(f"http://127.0.0.1:{port}", limited)
        await wait_ready(doomed.url, proc)
        task_id = await submit(doomed, {"sleep": {"seconds": 30}})
        async with contextlib.AsyncExitStack() as held:
            await held.enter_async_context(_watching(doomed, task_id, 2))
            proc.send_signal(signal.SIGKILL)  # no chance to release its streams' slots
            await proc.wait()
            with contextlib.suppress(Exception):  # its sockets are gone with it
                await held.aclose()
        async with run_api(limited) as url:
            survivor = Stack(url, limited, doomed.key)
            # the dead replica's streams still count (no new ones over the limit) ...
            assert not await _opens(survivor, task_id)
            started = asyncio.get_running_loop().time()
            # ... until their lease runs out
            while not await _opens(survivor, task_id):
                assert asyncio.get_running_loop().time() - started < 6, "leases never expired"
                await asyncio.sleep(0.2)
    finally:
        await stop(proc)


@pytest.mark.parametrize("protocol", ["graphql-transport-ws", "graphql-ws"])
async def test_a_websocket_without_connection_init_is_closed_after_the_timeout(
    settings: Settings, protocol: str
) -> None:
    quick = settings.model_copy(update={"ws_connection_init_timeout_seconds": 1.0})
    async with run_api(quick) as url:
        limits = (await (await Stack.keyed(url, quick)).execute(
            "{ limits { wsConnectionInitTimeoutSeconds } }"
        ))["limits"]  # fmt: skip
        assert limits == {"wsConnectionInitTimeoutSeconds": 1.0}
        ws_url = url.replace("http://", "ws://") + "/graphql"
        async with connect(ws_url, subprotocols=[Subprotocol(protocol)]) as ws:
            started = asyncio.get_running_loop().time()
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 4)
            elapsed = asyncio.get_running_loop().time() - started
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4408
    assert 0.5 < elapsed < 3
