"""Completion webhooks with real servers (issue 22): a receiver on 127.0.0.1 (allowlisted)
checks each POST's signature with the key's webhook secret and answers 500, 500, 200, so
there are three attempts; one that never answers times out without holding the worker's
only task slot; a loopback address the allowlist does not name is refused and recorded;
bad URLs are refused at submission; a key's default webhook; a worker that dies mid-POST
leaves the attempt to another."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from gql.transport.exceptions import TransportQueryError
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from taskrunner import keys, webhooks
from taskrunner.config import Settings
from taskrunner.models import task_table
from tests.support.environment import repo_root
from tests.support.servers import run_api, run_worker, serve
from tests.support.stack import Stack
from tests.support.tasks import submit
from tests.support.waiting import eventually

DELIVERIES = """
query($id: ID!) {
  task(id: $id) {
    status attempts result finishedAt webhookUrl
    webhookDeliveries { deliveryId attempt status statusCode error at dueAt finishedAt
                        durationMs taskStatus url }
  }
}"""


def readme_verify() -> Callable[[str, str, bytes], bool]:
    """The README's `verify` snippet, run as a receiver would copy it."""
    readme = (repo_root() / "README.md").read_text()
    section = readme.split("## Completion webhooks", 1)[1].split("\n## ", 1)[0]
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", section, re.S) if "def verify" in b]
    scope: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), scope)
    verify: Callable[[str, str, bytes], bool] = scope["verify"]
    return verify


@dataclass
class Receiver:
    """A webhook receiver: answers each POST with the next of `answers` (the last one
    repeats), keeping what it got."""

    answers: list[int]
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    on_first: Callable[[], Any] | None = None  # awaited when the first POST arrives
    seen_first: Any = None
    url: str = ""

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        self.got.append((dict(request.headers), body))
        if len(self.got) == 1 and self.on_first is not None:
            self.seen_first = await self.on_first()
        return Response(status_code=self.answers[min(len(self.got), len(self.answers)) - 1])


@contextlib.asynccontextmanager
async def receiver(answers: list[int]) -> AsyncIterator[Receiver]:
    found = Receiver(answers)
    app = Starlette(routes=[Route("/hook", found.hook, methods=["POST"])])
    async with serve(app) as url:
        found.url = f"{url}/hook"
        yield found


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[tuple[str, list[asyncio.StreamReader]]]:
    """A server on 127.0.0.1 that accepts connections and never answers."""
    held: list[asyncio.StreamReader] = []
    release = asyncio.Event()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(reader)
        await release.wait()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/hook", held
    finally:
        release.set()
        server.close()
        await server.wait_closed()


def hook_settings(settings: Settings, **more: Any) -> Settings:
    return settings.model_copy(
        update={
            "webhook_allowlist": "127.0.0.1",
            "webhook_retry_base_seconds": 0.2,
            "webhook_poll_seconds": 0.05,
            "webhook_timeout_seconds": 5.0,
            **more,
        }
    )


async def new_key(engine: AsyncEngine, owner: str = "hooks") -> tuple[str, str, str]:
    """A key of `owner`: its name, the key, its webhook secret."""
    name = f"{owner}-{uuid.uuid4().hex[:8]}"
    row, secret = await keys.create(engine, name=name, owner=owner)
    assert row.webhook_secret is not None and row.webhook_secret.startswith("whsec_")
    return name, secret, row.webhook_secret


async def deliveries(stack: Stack, task_id: str, count: int, within: float = 20) -> Any:
    """The task once it has `count` attempts none of which is PENDING any more (or, with
    a PENDING last one, `count` + 1 rows)."""
    found: dict[str, Any] = {}

    async def done() -> bool:
        """the webhook attempts were made"""
        found.update((await stack.execute(DELIVERIES, id=task_id))["task"])
        made = [d for d in found["webhookDeliveries"] if d["status"] != "PENDING"]
        return len(made) >= count

    await eventually(done, within=within)
    return found


async def test_a_webhook_is_signed_and_retried_until_the_receiver_takes_it(
    settings: Settings, engine: AsyncEngine
) -> None:
    settings = hook_settings(settings)
    verify = readme_verify()
    _, key, secret = await new_key(engine)
    async with (
        receiver([500, 500, 200]) as hook,
        run_api(settings) as url,
        run_worker(settings),
    ):
        stack = Stack(url, settings, key)
        task_id = ""

        async def status_now() -> str:
            return str((await stack.execute(DELIVERIES, id=task_id))["task"]["status"])

        hook.on_first = status_now
        task_id = await submit(stack, {"echo": {"message": "hi"}}, webhookUrl=hook.url)
        task = await deliveries(stack, task_id, 3)
    # the task's outcome: final before the first POST, and untouched by the receiver's 500s
    assert hook.seen_first == "SUCCEEDED"
    assert (task["status"], task["attempts"], task["webhookUrl"]) == ("SUCCEEDED", 1, hook.url)
    attempts = task["webhookDeliveries"]
    assert [(d["attempt"], d["status"], d["statusCode"]) for d in attempts] == [
        (1, "FAILED", 500),
        (2, "FAILED", 500),
        (3, "DELIVERED", 200),
    ], attempts
    assert [d["error"] for d in attempts] == ["HTTP 500", "HTTP 500", None]
    assert len({d["deliveryId"] for d in attempts}) == 1
    assert all(d["taskStatus"] == "SUCCEEDED" and d["durationMs"] >= 0 for d in attempts)
    # the retries waited for their backoff (0.2 s, then 0.6 s, each at least 75% of it)
    assert attempts[1]["at"] > attempts[0]["finishedAt"]
    assert len(hook.got) == 3
    for n, (headers, body) in enumerate(hook.got, 1):
        assert verify(secret, headers["taskrunner-signature"], body), headers
        assert not verify("whsec_another", headers["taskrunner-signature"], body)
        assert not verify(secret, headers["taskrunner-signature"], body + b" ")
        assert headers["taskrunner-event"] == "task.finished"
        assert headers["taskrunner-delivery"] == attempts[0]["deliveryId"]
        assert headers["taskrunner-attempt"] == str(n)
        sent = orjson.loads(body)
        assert (sent["event"], sent["deliveryId"], sent["attempt"]) == (
            "task.finished",
            attempts[0]["deliveryId"],
            n,
        )
        assert sent["task"]["id"] == task_id
        assert sent["task"]["status"] == "SUCCEEDED"
        assert sent["task"]["result"] == task["result"]
        assert (sent["task"]["error"], sent["task"]["attempt"]) == (None, 1)


async def test_a_receiver_that_never_answers_times_out_without_holding_a_task_slot(
    settings: Settings, engine: AsyncEngine
) -> None:
    settings = hook_settings(
        settings,
        worker_concurrency=1,  # one task slot: a POST holding it would stop the next task
        webhook_timeout_seconds=6.0,
        webhook_max_attempts=2,
        webhook_retry_base_seconds=60.0,
    )
    _, key, _ = await new_key(engine)
    async with (
        silent_server() as (url, held),
        run_api(settings) as api_url,
        run_worker(settings),
    ):
        stack = Stack(api_url, settings, key)
        hooked = await submit(stack, {"echo": {"message": "a"}}, webhookUrl=url)

        async def posting() -> bool:
            """the worker connected to the silent receiver"""
            return bool(held)

        await eventually(posting, within=10)
        loop = asyncio.get_running_loop()
        started = loop.time()
        other = await submit(stack, {"echo": {"message": "b"}})

        async def other_done() -> bool:
            """the other task ended"""
            task = (await stack.execute(DELIVERIES, id=other))["task"]
            return bool(task["status"] == "SUCCEEDED")

        await eventually(other_done, within=5)
        assert loop.time() - started < 6.0  # while the POST still waits for its answer
        during = (await stack.execute(DELIVERIES, id=hooked))["task"]["webhookDeliveries"]
        assert [d["status"] for d in during] == ["PENDING"], during
        task = await deliveries(stack, hooked, 1, within=15)
    first, second = task["webhookDeliveries"]
    assert (first["status"], first["statusCode"]) == ("FAILED", None)
    assert first["error"] == "no answer within WEBHOOK_TIMEOUT_SECONDS (6 s)"
    assert 5500 <= first["durationMs"] < 10000, first
    assert (second["attempt"], second["status"]) == (2, "PENDING")  # due after its backoff
    assert task["status"] == "SUCCEEDED"


async def test_a_loopback_address_the_allowlist_does_not_name_is_refused_and_not_retried(
    settings: Settings, engine: AsyncEngine, dns: Any
) -> None:
    settings = hook_settings(settings, webhook_allowlist="*")  # public hosts only
    dns({"hooks.example.test": [["127.0.0.1"]]})
    _, key, _ = await new_key(engine)
    async with (
        receiver([200]) as hook,
        run_api(settings) as url,
        run_worker(settings),
    ):
        stack = Stack(url, settings, key)
        port = hook.url.split(":")[2].split("/")[0]
        task_id = await submit(
            stack, {"echo": {"message": "x"}}, webhookUrl=f"http://hooks.example.test:{port}/hook"
        )
        task = await deliveries(stack, task_id, 1)
        await asyncio.sleep(1.0)  # 5 retry periods: no second attempt comes
        again = (await stack.execute(DELIVERIES, id=task_id))["task"]
    (only,) = again["webhookDeliveries"]
    assert (only["status"], only["statusCode"]) == ("FAILED", None)
    assert only["error"].startswith("refused: host hooks.example.test resolves to a loopback")
    assert "WEBHOOK_ALLOWLIST" in only["error"]
    assert hook.got == []
    assert task["status"] == "SUCCEEDED"


PUBLIC_OR_EXAMPLE = "*,example.com"  # any public host, and example.com


@pytest.mark.parametrize(
    ("url", "allowlist", "says"),
    [
        ("ftp://example.com/hook", PUBLIC_OR_EXAMPLE, "only http and https"),
        ("http:///hook", PUBLIC_OR_EXAMPLE, "only http and https"),
        ("http://127.0.0.2:8080/hook", PUBLIC_OR_EXAMPLE, "loopback"),
        ("http://[::1]:8080/hook", PUBLIC_OR_EXAMPLE, "loopback"),
        ("http://10.0.0.1/hook", PUBLIC_OR_EXAMPLE, "non-public"),
        ("http://internal.example.com/hook", "example.com", "not in WEBHOOK_ALLOWLIST"),
        ("https://example.com/" + "x" * 2000, PUBLIC_OR_EXAMPLE, "1 to 2000 characters"),
        (" https://example.com/hook", PUBLIC_OR_EXAMPLE, "1 to 2000 characters"),
        ("http://example.com:99999/hook", PUBLIC_OR_EXAMPLE, "port"),
        # urlsplit takes both; the delivery's httpx.URL would not (a row retried forever)
        ("https://example.com/\x7f", PUBLIC_OR_EXAMPLE, "not a URL"),
        ("http://[::1/hook", PUBLIC_OR_EXAMPLE, "not a URL"),
    ],
)
async def test_a_bad_webhook_url_is_refused_naming_the_field_and_creates_nothing(
    settings: Settings, engine: AsyncEngine, url: str, allowlist: str, says: str
) -> None:
    settings = hook_settings(settings, webhook_allowlist=allowlist)
    _, key, _ = await new_key(engine)
    async with run_api(settings) as api_url:
        stack = Stack(api_url, settings, key)
        with pytest.raises(TransportQueryError) as raised:
            await submit(stack, {"echo": {"message": "x"}}, webhookUrl=url)
        (error,) = raised.value.errors or []
        assert error["extensions"]["code"] == "BAD_INPUT"
        assert error["extensions"]["field"] == "options.webhookUrl"
        assert says in error["message"], error["message"]
        batch = [
            {"task": {"echo": {"message": "ok"}}},
            {"task": {"echo": {"message": "x"}}, "options": {"webhookUrl": url}},
        ]
        with pytest.raises(TransportQueryError) as raised:
            await stack.execute(
                "mutation($t: [TaskSubmissionInput!]!) { submitTasks(tasks: $t) { id } }",
                t=batch,
            )
        (error,) = raised.value.errors or []
        assert error["extensions"]["field"] == "tasks[1].options.webhookUrl"
    async with engine.connect() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(task_table)) == 0


async def test_a_keys_default_webhook_is_used_when_the_options_give_none(
    settings: Settings, engine: AsyncEngine
) -> None:
    settings = hook_settings(settings)
    verify = readme_verify()
    name, key, secret = await new_key(engine)
    async with receiver([200]) as default, receiver([200]) as chosen:
        row, made = await keys.set_webhook(engine, name, url=default.url)
        assert (row.webhook_url, made) == (default.url, None)  # it had a secret: kept
        async with run_api(settings) as url, run_worker(settings):
            stack = Stack(url, settings, key)
            by_default = await submit(stack, {"echo": {"message": "d"}})
            by_option = await submit(stack, {"echo": {"message": "o"}}, webhookUrl=chosen.url)
            first = await deliveries(stack, by_default, 1)
            second = await deliveries(stack, by_option, 1)
    assert first["webhookUrl"] == default.url
    assert second["webhookUrl"] == chosen.url
    assert [d["status"] for d in first["webhookDeliveries"]] == ["DELIVERED"]
    assert [d["status"] for d in second["webhookDeliveries"]] == ["DELIVERED"]
    ((headers, body),) = default.got
    assert verify(secret, headers["taskrunner-signature"], body)
    assert orjson.loads(body)["task"]["id"] == by_default
    ((_, body),) = chosen.got
    assert orjson.loads(body)["task"]["id"] == by_option


async def test_a_key_without_a_webhook_secret_cannot_ask_for_a_webhook_unless_the_server_signs(
    settings: Settings, engine: AsyncEngine
) -> None:
    settings = hook_settings(settings)
    name, key, _ = await new_key(engine)
    async with engine.begin() as conn:  # as a key made before webhooks
        await conn.execute(
            sa.update(keys.api_key_table)
            .where(keys.api_key_table.c.name == name)
            .values(webhook_secret=None)
        )
    async with run_api(settings) as url:
        with pytest.raises(TransportQueryError) as raised:
            await submit(
                Stack(url, settings, key),
                {"echo": {"message": "x"}},
                webhookUrl="http://127.0.0.1:9/hook",
            )
    (error,) = raised.value.errors or []
    assert error["extensions"]["field"] == "options.webhookUrl"
    assert f"taskrunner keys set-webhook {name} --new-secret" in error["message"]
    signing = settings.model_copy(update={"webhook_secret": SecretStr("server-secret")})
    async with receiver([200]) as hook, run_api(signing) as url, run_worker(signing):
        stack = Stack(url, signing, key)
        task_id = await submit(stack, {"echo": {"message": "x"}}, webhookUrl=hook.url)
        await deliveries(stack, task_id, 1)
    ((headers, body),) = hook.got
    assert readme_verify()("server-secret", headers["taskrunner-signature"], body)


async def test_a_worker_that_dies_mid_post_leaves_the_attempt_to_another(
    settings: Settings, engine: AsyncEngine
) -> None:
    """An attempt claimed by a worker that died (claimed here, never finished) is made by
    a live worker once the claim's lease ran out, and not before."""
    settings = hook_settings(settings, webhook_timeout_seconds=1.0)  # a lease of 7 s
    _, key, _ = await new_key(engine)
    async with receiver([200]) as hook, run_api(settings) as url:
        stack = Stack(url, settings, key)
        task_id = await submit(stack, {"echo": {"message": "x"}}, webhookUrl=hook.url)
        # a worker that runs the task but looks for due webhooks only when it starts
        async with run_worker(settings.model_copy(update={"webhook_poll_seconds": 3600})):
            await eventually(_ended(stack, task_id), within=10)
        (claimed,) = await webhooks.claim(engine, 10, settings)  # by a worker that then dies
        assert claimed.task_id == uuid.UUID(task_id)
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with run_worker(settings):
            task = await deliveries(stack, task_id, 1, within=20)
            waited = loop.time() - started
    lease = 2 * settings.webhook_timeout_seconds + 5  # as the README says
    assert waited >= lease - 0.5, waited  # not before the lease ran out
    assert [(d["attempt"], d["status"]) for d in task["webhookDeliveries"]] == [(1, "DELIVERED")]
    assert len(hook.got) == 1


def _ended(stack: Stack, task_id: str) -> Callable[[], Any]:
    async def ended() -> bool:
        """the task ended"""
        task = (await stack.execute(DELIVERIES, id=task_id))["task"]
        return bool(task["status"] == "SUCCEEDED")

    return ended


async def test_workflow_steps_and_a_schedules_tasks_are_signed_by_the_key_that_submitted_them(
    settings: Settings, engine: AsyncEngine
) -> None:
    settings = hook_settings(settings)
    verify = readme_verify()
    _, key, secret = await new_key(engine)
    async with receiver([200]) as hook, run_api(settings) as url, run_worker(settings):
        stack = Stack(url, settings, key)
        made = await stack.execute(
            "mutation($w: WorkflowInput!) { submitWorkflow(workflow: $w) "
            "{ steps { task { id } } } }",
            w={
                "steps": [
                    {
                        "key": "a",
                        "task": {"echo": {"message": "a"}},
                        "options": {"webhookUrl": hook.url},
                    }
                ]
            },
        )
        step = made["submitWorkflow"]["steps"][0]["task"]["id"]
        schedule = await stack.execute(
            "mutation($s: ScheduleInput!) { createSchedule(schedule: $s) { id } }",
            s={
                "name": "hooked",
                "everySeconds": 3600,
                "paused": True,
                "task": {"echo": {"message": "s"}},
                "options": {"webhookUrl": hook.url},
            },
        )
        fired = await stack.execute(
            "mutation($id: ID!) { triggerSchedule(id: $id) { id } }",
            id=schedule["createSchedule"]["id"],
        )
        tick = fired["triggerSchedule"]["id"]
        await deliveries(stack, step, 1)
        await deliveries(stack, tick, 1)
    sent = {orjson.loads(body)["task"]["id"]: (headers, body) for headers, body in hook.got}
    assert set(sent) == {step, tick}
    for headers, body in sent.values():
        assert verify(secret, headers["taskrunner-signature"], body)
