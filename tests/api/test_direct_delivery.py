"""Direct delivery of shared subscription results (api.fanout.delivery, api.fanout.direct),
coalesced websocket writes (api.fanout.websocket) and the leaner extensions runner
(api.fanout.extensions.ExtensionsRunner): the same messages, in the same order, each once,
and nothing shared between callers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import orjson
import pytest
import strawberry
from graphql import ExecutionResult as GraphQLExecutionResult
from graphql import GraphQLError
from strawberry.extensions import SchemaExtension
from websockets.asyncio.client import connect
from websockets.frames import OP_TEXT, Frame

from api.fanout.delivery import Delivery, current
from api.fanout.direct import encoded
from api.fanout.executor import Executed
from api.fanout.extensions import FanoutSchema
from api.fanout.websocket import FLUSH_BYTES, SEND_TEXT_NOW, CoalescingTransport, text_frame
from taskrunner.config import Settings
from tests.support.fanout import counting_direct_sends, run_direct_api
from tests.support.servers import run_worker
from tests.support.stack import Stack
from tests.support.subscriptions import PROTOCOL, redis_channels, subscribe_many
from tests.support.tasks import EVENTS, WATCH, submit
from tests.support.waiting import eventually

# --- end to end ----------------------------------------------------------------------------


async def _watch_raw(url: str, key: str | None, task_id: str, after: str) -> list[str]:
    """One subscription from `after` over a raw socket: the cursors of its `next` messages
    until `complete` (each message checked to be exactly what strawberry would send)."""
    cursors: list[str] = []
    async with connect(url.replace("http", "ws") + "/graphql", subprotocols=[PROTOCOL]) as ws:
        init = {"type": "connection_init", "payload": {"Authorization": f"Bearer {key}"}}
        await ws.send(orjson.dumps(init).decode())
        assert orjson.loads(await ws.recv())["type"] == "connection_ack"
        payload = {"query": WATCH, "variables": {"id": task_id, "after": after}}
        await ws.send(
            orjson.dumps({"id": "late", "type": "subscribe", "payload": payload}).decode()
        )
        async for raw in ws:
            assert isinstance(raw, str)  # text frames, as graphql-ws clients read them
            message = orjson.loads(raw)
            if message["type"] == "complete":
                return cursors
            assert message["type"] == "next", message
            assert list(message) == ["id", "type", "payload"] and message["id"] == "late"
            assert list(message["payload"]) == ["data"], message  # no errors, no extensions
            cursors.append(message["payload"]["data"]["taskUpdates"]["cursor"])
    raise AssertionError("the connection closed before the subscription completed")


async def test_direct_delivery_keeps_every_subscriber_exact_across_backlog_and_live(
    settings: Settings,
) -> None:
    """100 subscribers from the start and 10 that join mid-stream with a cursor (backlog,
    then live) each get every event after their cursor once, in order, then `complete`."""
    with counting_direct_sends() as sent:
        async with run_direct_api(settings) as url:
            stack = await Stack.keyed(url, settings)
            chatter = {"chatter": {"progressSteps": 0, "logLines": 61, "intervalSeconds": 0.02}}
            task_id = await submit(stack, chatter)
            ready = asyncio.Event()
            early = asyncio.create_task(subscribe_many(url, stack.key, task_id, 4, 25, ready))
            await asyncio.wait_for(ready.wait(), 30)
            async with run_worker(settings):

                async def stored() -> list[str]:
                    events = (await stack.execute(EVENTS, id=task_id))["task"]["events"]
                    return [e["cursor"] for e in events]

                async def running() -> bool:
                    """ten events stored: late subscribers join from the fifth"""
                    return len(await stored()) >= 10

                await eventually(running, 30)
                after = (await stored())[4]
                late = [_watch_raw(url, stack.key, task_id, after) for _ in range(10)]
                results = await asyncio.wait_for(asyncio.gather(early, *late), 60)
                expected = await stored()
    early_results, late_results = results[0], results[1:]
    assert len(expected) == 64  # QUEUED, RUNNING, 61 lines, SUCCEEDED
    assert len(early_results) == 100 and all(got == expected for got in early_results)
    assert all(got == expected[5:] for got in late_results)
    assert len(sent) >= 100 * 50  # most live events went the direct way
    assert sum(path == "hub" for path, _ in sent) >= 100 * 40  # most from the hub at once


async def test_disconnected_subscribers_are_released_with_coalesced_writes(
    settings: Settings,
) -> None:
    async with run_direct_api(settings) as url:
        stack = await Stack.keyed(url, settings)
        before = await redis_channels(settings.require_redis_url())
        ids = [await submit(stack, {"sleep": {"seconds": 30}}) for _ in range(3)]
        ready = [asyncio.Event() for _ in ids]
        watchers = [
            asyncio.create_task(subscribe_many(url, stack.key, task_id, 2, 5, opened))
            for task_id, opened in zip(ids, ready, strict=True)
        ]
        # every subscription has its first event: all are open
        await asyncio.wait_for(asyncio.gather(*(opened.wait() for opened in ready)), 30)
        for watcher in watchers:
            watcher.cancel()  # the clients disconnect
        await asyncio.gather(*watchers, return_exceptions=True)

        async def released() -> bool:
            """the channels back to what they were"""
            return await redis_channels(settings.require_redis_url()) == before

        await eventually(released, 5)


# --- the delivery and the shared results -----------------------------------------------------


class _View:
    def encode_json(self, data: object) -> str:
        return orjson.dumps(data).decode()


class _Operation:
    def __init__(self, id: Any) -> None:
        self.id, self.completed = id, False


class _Socket:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send_text(self, text: str) -> None:
        self.sent.append(text)


class _Runner:
    plain = True


def _delivery(id: Any = "7") -> tuple[Delivery, _Socket]:
    socket = _Socket()
    delivery = Delivery(_View(), socket, _Operation(id))  # type: ignore[arg-type]
    delivery.runner = _Runner()
    return delivery, socket


async def test_a_direct_message_is_the_one_strawberry_would_send() -> None:
    data = {"taskUpdates": {"cursor": "12", "line": 'a "quoted" line \u00e9'}}
    for id in ("7", 'x"y', 12):
        delivery, socket = _delivery(id)
        entry = Executed(object(), GraphQLExecutionResult(data=data))
        payload = encoded(entry, entry.result, delivery)
        assert payload is not None
        await delivery.send(payload)
        # strawberry's Operation.send_next, encoded by the view
        expected = {"id": id, "type": "next", "payload": {"data": data}}
        assert socket.sent == [_View().encode_json(expected)]


async def test_a_result_with_errors_or_a_finished_operation_goes_the_usual_way() -> None:
    delivery, socket = _delivery()
    failed = GraphQLExecutionResult(data=None, errors=[GraphQLError("boom")])
    entry = Executed(object(), failed)
    assert encoded(entry, failed, delivery) is None  # strawberry classifies it
    assert delivery.usable
    delivery.runner.plain = False  # an extension with results or per-result hooks
    assert not delivery.usable
    delivery.runner = _Runner()
    delivery.operation.completed = True
    assert not delivery.usable
    await delivery.send("{}")
    assert socket.sent == []  # as strawberry: nothing after complete


async def test_an_encoded_payload_is_kept_per_shared_result_and_view() -> None:
    delivery, _ = _delivery()
    first = Executed(object(), GraphQLExecutionResult(data={"x": 1}))
    second = Executed(object(), GraphQLExecutionResult(data={"x": 2}))
    assert encoded(first, first.result, delivery) == '{"data":{"x":1}}'
    assert encoded(second, second.result, delivery) == '{"data":{"x":2}}'
    first.result.data = {"x": 3}  # read once: the cached encoding is the entry's
    assert encoded(first, first.result, delivery) == '{"data":{"x":1}}'
    other, _ = _delivery()
    other.view = _View()  # another app in the process: encoded again, by it
    assert encoded(first, first.result, other) == '{"data":{"x":3}}'


def test_a_message_goes_out_from_the_hub_only_while_its_operation_runs_on_its_socket() -> None:
    written: list[str] = []
    writable = True

    def send_text_now(text: str) -> bool:
        if writable:
            written.append(text)
        return writable

    socket = _Socket()
    socket.scope = {"extensions": {SEND_TEXT_NOW: {"send": send_text_now}}}  # type: ignore[attr-defined]
    operation = _Operation("7")
    operations: dict[str, Any] = {"7": operation}
    delivery = Delivery(_View(), socket, operation, operations)  # type: ignore[arg-type]
    assert delivery.send_now('{"data":1}')
    assert written == ['{"id":"7","type":"next","payload":{"data":1}}']
    writable = False  # the client does not read: the subscription's task sends it, waiting
    assert not delivery.send_now('{"data":2}')
    writable = True
    operations["7"] = _Operation("7")  # completed by the client, and the id used again
    assert not delivery.send_now('{"data":3}')
    operations["7"] = operation
    operation.completed = True
    assert not delivery.send_now('{"data":4}')
    # without the server's extension (another ASGI server): never from the hub
    assert not Delivery(_View(), _Socket(), _Operation("8"), {}).send_now("{}")  # type: ignore[arg-type]
    assert written == ['{"id":"7","type":"next","payload":{"data":1}}']


async def test_no_delivery_outside_a_graphql_transport_ws_operation() -> None:
    assert current() is None


# --- the extensions runner -----------------------------------------------------------------


@strawberry.type
class _Query:
    hello: str = "hi"


@strawberry.type
class _Subscription:
    @strawberry.subscription
    async def count(self) -> AsyncGenerator[int, None]:
        for i in range(3):
            yield i


@pytest.mark.parametrize("hooked", [False, True])
async def test_extension_results_and_stream_hooks_are_kept_exactly(hooked: bool) -> None:
    seen: list[Any] = []

    class Results(SchemaExtension):
        def get_results(self) -> dict[str, Any]:
            return {"mine": 1}

    class OnStream(SchemaExtension):
        def on_stream_result(self, result: Any) -> None:  # type: ignore[override]
            seen.append(result.data)

    class Plain(SchemaExtension):
        pass

    extensions: list[Any] = [Results, OnStream] if hooked else [Plain]
    schema = FanoutSchema(query=_Query, subscription=_Subscription, extensions=extensions)
    results = [r async for r in await schema.subscribe("subscription { count }")]
    assert [r.data for r in results] == [{"count": 0}, {"count": 1}, {"count": 2}]
    assert all(r.errors is None for r in results)
    if hooked:
        assert [r.extensions for r in results] == [{"mine": 1}] * 3
        assert seen == [{"count": 0}, {"count": 1}, {"count": 2}]
    else:
        assert [r.extensions for r in results] == [{}] * 3


# --- coalesced writes ----------------------------------------------------------------------


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> str:
        return f"info {name}"


async def test_writes_of_one_loop_turn_go_out_together_in_order() -> None:
    real = _Transport()
    transport = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    for n in range(50):
        transport.write(b"frame %d;" % n)
    assert real.writes == [] and transport.get_write_buffer_size() > 0
    await asyncio.sleep(0)  # the next turn
    assert real.writes == [b"".join(b"frame %d;" % n for n in range(50))]
    transport.write(b"late")
    await asyncio.sleep(0)
    assert real.writes[1:] == [b"late"]
    assert transport.get_extra_info("peername") == "info peername"  # the rest passes through


async def test_a_close_writes_what_waits_first_and_an_abort_drops_it() -> None:
    loop = asyncio.get_running_loop()
    real = _Transport()
    transport = CoalescingTransport(real, loop)  # type: ignore[arg-type]
    transport.write(b"last frame")
    transport.write(b"close frame")
    transport.close()
    assert real.writes == [b"last frameclose frame"] and real.closed
    await asyncio.sleep(0)  # the scheduled flush finds nothing
    assert real.writes == [b"last frameclose frame"]
    real = _Transport()
    transport = CoalescingTransport(real, loop)  # type: ignore[arg-type]
    transport.write(b"never")
    transport.abort()
    await asyncio.sleep(0)
    assert real.writes == [] and real.aborted


async def test_a_large_burst_is_written_without_waiting_for_the_turn() -> None:
    real = _Transport()
    transport = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    chunk = b"x" * 1000
    for _ in range(FLUSH_BYTES // len(chunk) + 1):
        transport.write(chunk)
    assert len(real.writes) == 1 and len(real.writes[0]) >= FLUSH_BYTES


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_a_text_frame_is_the_one_websockets_would_make(length: int) -> None:
    data = ("\u00e9" * length).encode()[:length]
    assert text_frame(data) == Frame(OP_TEXT, data).serialize(mask=False, extensions=[])


async def test_long_and_short_messages_arrive_whole_over_coalesced_writes(
    settings: Settings,
) -> None:
    """Short and long frames, many per loop turn, read back by real clients."""
    async with run_direct_api(settings) as url:
        stack = await Stack.keyed(url, settings)
        long_line = "\u00e9" * 30_000  # 60 kB frames (longer ones: the test above)
        task_id = await submit(stack, {"echo": {"message": long_line}})
        async with run_worker(settings):
            cursors = await asyncio.wait_for(
                asyncio.gather(*(_watch_raw(url, stack.key, task_id, "0") for _ in range(30))),
                30,
            )
        stored = [e["cursor"] for e in (await stack.execute(EVENTS, id=task_id))["task"]["events"]]
    assert all(got == stored for got in cursors)
