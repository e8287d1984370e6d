"""`make smoke` (seed 002): checks a running service from outside, as a client does, and
prints one line per check: PASS, FAIL (with what it saw) or SKIP (with why: e.g. search
without BRAVE_API_KEY on the server). Exit 0 only when nothing FAILED.

Checks: /readyz; one task of each built-in type run to its end (echo, sum, sleep, chatter
with its log served, report with its artifact downloaded, webScrape of the api's own
/healthz, search, fail); cancel of a running task; retry of a failed one to SUCCEEDED.
Only the GraphQL API and the links it hands out are used."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}
SUBMIT = """mutation($task: TaskSpecInput!, $options: TaskOptionsInput) {
  submitTask(task: $task, options: $options) { id } }"""
TASK = """query($id: ID!) { task(id: $id) {
  status attempts result error { code message } logsUrl
  artifacts { name size url } } }"""


class Failed(Exception):
    """A check saw something other than what it expects."""


class Skipped(Exception):
    """A check cannot run against this service (its message says why)."""


@dataclass
class Client:
    http: httpx.AsyncClient
    within: float

    async def gql(self, query: str, **variables: Any) -> dict[str, Any]:
        response = await self.http.post("/graphql", json={"query": query, "variables": variables})
        body = response.json()
        if body.get("errors"):
            error = body["errors"][0]
            code = error.get("extensions", {}).get("code", "")
            raise Failed(f"{code} {error['message']}".strip())
        return dict(body["data"])

    async def submit(self, task: dict[str, Any], **options: Any) -> str:
        data = await self.gql(SUBMIT, task=task, options=options or None)
        return str(data["submitTask"]["id"])

    async def task(self, task_id: str) -> dict[str, Any]:
        return dict((await self.gql(TASK, id=task_id))["task"])

    async def until(self, task_id: str, statuses: set[str]) -> dict[str, Any]:
        deadline = time.monotonic() + self.within
        while True:
            task = await self.task(task_id)
            if task["status"] in statuses:
                return task
            if time.monotonic() > deadline:
                raise Failed(f"still {task['status']} after {self.within:.0f} s")
            await asyncio.sleep(0.1)

    async def run(self, task: dict[str, Any], **options: Any) -> dict[str, Any]:
        """Submit `task` and wait for its end; FAILED is a failure with its error."""
        done = await self.until(await self.submit(task, **options), TERMINAL)
        if done["status"] != "SUCCEEDED":
            error = done.get("error") or {}
            raise Failed(f"{done['status']}: {error.get('code')} {error.get('message')}")
        return done


async def _ready(c: Client) -> str:
    response = await c.http.get("/readyz")
    if response.status_code != 200:
        raise Failed(f"/readyz answered {response.status_code}: {response.text[:200]}")
    return "PostgreSQL and Redis answer"


async def _echo(c: Client) -> str:
    done = await c.run({"echo": {"message": "smoke"}})
    if "smoke" not in str(done["result"]):
        raise Failed(f"result {done['result']!r}")
    return "result echoed"


async def _sum(c: Client) -> str:
    done = await c.run({"sum": {"numbers": [1, 2, 3.5]}})
    if "6.5" not in str(done["result"]):
        raise Failed(f"result {done['result']!r}, expected 6.5")
    return "1 + 2 + 3.5 = 6.5"


async def _sleep(c: Client) -> str:
    await c.run({"sleep": {"seconds": 0.5}})
    return "slept 0.5 s"


async def _chatter(c: Client) -> str:
    done = await c.run({"chatter": {"progressSteps": 3, "logLines": 3, "intervalSeconds": 0}})
    log = await c.http.get(done["logsUrl"])
    if log.status_code != 200 or "line 3 of 3" not in log.text:
        raise Failed(f"its log answered {log.status_code}: {log.text[-200:]!r}")
    return "its log served"


async def _report(c: Client) -> str:
    done = await c.run({"report": {"rows": 10}})
    if not done["artifacts"]:
        raise Failed("no artifact")
    artifact = done["artifacts"][0]
    download = await c.http.get(artifact["url"])
    if download.status_code != 200 or len(download.content) != artifact["size"]:
        raise Failed(f"download answered {download.status_code}, {len(download.content)} bytes")
    return f"artifact {artifact['name']} downloaded ({artifact['size']} bytes)"


async def _web_scrape(c: Client) -> str:
    url = f"{c.http.base_url}".rstrip("/") + "/healthz"
    task_id = await c.submit({"webScrape": {"url": url}})
    done = await c.until(task_id, TERMINAL)
    error = done.get("error") or {}
    if error.get("code") == "FETCH_REFUSED":
        raise Skipped(f"the api's own address is refused ({error.get('message')})")
    if done["status"] != "SUCCEEDED":
        raise Failed(f"{done['status']}: {error.get('code')} {error.get('message')}")
    return f"fetched {url}"


async def _search(c: Client) -> str:
    task_id = await c.submit({"search": {"query": "taskrunner", "sources": ["brave"]}})
    done = await c.until(task_id, TERMINAL)
    error = done.get("error") or {}
    if error.get("code") == "SEARCH_NOT_CONFIGURED":
        raise Skipped("BRAVE_API_KEY is not set on the worker")
    if done["status"] != "SUCCEEDED":
        raise Failed(f"{done['status']}: {error.get('code')} {error.get('message')}")
    return "results returned"


async def _fail(c: Client) -> str:
    done = await c.until(await c.submit({"fail": {"failTimes": 1}}), TERMINAL)
    if done["status"] != "FAILED" or (done.get("error") or {}).get("code") != "TASK_ERROR":
        raise Failed(f"{done['status']} {done.get('error')}, expected FAILED with TASK_ERROR")
    return "FAILED with TASK_ERROR, as asked"


async def _cancel(c: Client) -> str:
    task_id = await c.submit({"sleep": {"seconds": 30}})
    await c.until(task_id, {"RUNNING"})
    await c.gql("mutation($id: ID!) { cancelTask(id: $id) { id } }", id=task_id)
    started = time.monotonic()
    done = await c.until(task_id, TERMINAL)
    if done["status"] != "CANCELLED":
        raise Failed(f"ended {done['status']}")
    return f"a running sleep cancelled in {time.monotonic() - started:.1f} s"


async def _retry(c: Client) -> str:
    task_id = await c.submit({"fail": {"failTimes": 1}})
    if (await c.until(task_id, TERMINAL))["status"] != "FAILED":
        raise Failed("the first attempt did not fail")
    await c.gql("mutation($id: ID!) { retryTask(id: $id) { id } }", id=task_id)
    done = await c.until(task_id, TERMINAL)  # retryTask made it QUEUED again
    if done["status"] != "SUCCEEDED" or done["attempts"] != 2:
        raise Failed(f"{done['status']} after {done['attempts']} attempts")
    return "FAILED, retried, SUCCEEDED on attempt 2"


CHECKS: list[tuple[str, Callable[[Client], Awaitable[str]]]] = [
    ("ready", _ready),
    ("echo", _echo),
    ("sum", _sum),
    ("sleep", _sleep),
    ("chatter", _chatter),
    ("report", _report),
    ("webScrape", _web_scrape),
    ("search", _search),
    ("fail", _fail),
    ("cancel", _cancel),
    ("retry", _retry),
]


async def smoke(url: str, key: str | None, within: float = 30, out: Any = print) -> bool:
    """Run every check against `url`; print a line for each; True when none FAILED."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    ok = True
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=within) as http:
        client = Client(http, within)
        for name, check in CHECKS:
            started = time.monotonic()
            try:
                said = await check(client)
                line = f"PASS {name}: {said}"
            except Skipped as exc:
                line = f"SKIP {name}: {exc}"
            except (Failed, httpx.HTTPError, KeyError, ValueError) as exc:
                ok = False
                line = f"FAIL {name}: {exc or type(exc).__name__}"
            out(f"{line} ({(time.monotonic() - started) * 1000:.0f} ms)")
    out("smoke: all passed" if ok else "smoke: FAILED")
    return ok
