"""The console's views (frontend-examples/dashboard) in headless Chromium against a real
api and worker: each renders live data, the overview's counts are those `tasks` answers
and follow new tasks, a failed task retried from the Failed view ends SUCCEEDED, bulk
cancel/retry of selected rows, queue and schedule actions, a workflow's DAG laid out and
followed live, the first run with the dev key, and states that say what to do. axe-core
finds no serious or critical violation on any view. The views' screenshots in
frontend-examples/dashboard/screenshots/ are rewritten with UPDATE_SCREENSHOT=1.

The submit form and the task page's cancel/retry/resume: tests/e2e/test_dashboard.py."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Locator, Page, expect
from pydantic import SecretStr
from starlette.applications import Starlette

from api.app import create_app
from taskrunner.config import Settings
from taskrunner.embedded import free_port
from tests.support.browser import chromium, console_errors
from tests.support.environment import repo_root
from tests.support.servers import run_api, run_worker
from tests.support.stack import Stack, make_key
from tests.support.waiting import eventually

DASHBOARD = repo_root() / "frontend-examples" / "dashboard"
SHOTS = DASHBOARD / "screenshots"  # README's: rewritten with UPDATE_SCREENSHOT=1
AXE = DASHBOARD / "node_modules" / "axe-core" / "axe.min.js"
BUILD_FIRST = "run `make dashboard` first (npm ci and npm run build in frontend-examples/dashboard)"
SECONDS = 1000  # playwright counts milliseconds
expect.set_options(timeout=10 * SECONDS)

SUBMIT = """mutation($t: TaskSpecInput!, $o: TaskOptionsInput) {
    submitTask(task: $t, options: $o) { id } }"""
SUBMIT_MANY = "mutation($ts: [TaskSubmissionInput!]!) { submitTasks(tasks: $ts) { id } }"
TASK = "query($id: ID!) { task(id: $id) { status attempts scheduleId } }"
IDS = "query($f: TaskFilter) { tasks(filter: $f, first: 100) { edges { node { id } } } }"
WORKFLOW = "mutation($w: WorkflowInput!) { submitWorkflow(workflow: $w) { id } }"
BY_THE_KEY = re.compile(r"^ · by tester-\d+ \(tester\)$")  # a change by make_key's key


def console_app(settings: Settings) -> Starlette:
    """The api, which serves the built console at /dashboard/ (and its config.json)."""
    if not (DASHBOARD / "dist" / "index.html").exists():
        pytest.fail(f"the console is not built: {BUILD_FIRST}")
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: {BUILD_FIRST}")
    return create_app(settings)


@pytest.fixture
async def browser() -> Any:
    async with chromium() as browser:
        yield browser


async def open_console(
    browser: Browser, url: str, route: str, key: str | None
) -> tuple[Page, list[str]]:
    page = await browser.new_page(viewport={"width": 1360, "height": 860})
    page.set_default_timeout(10 * SECONDS)
    errors = console_errors(page)
    query = f"?key={key}" if key else ""
    await page.goto(f"{url}/dashboard/{query}#/{route}")
    return page, errors


async def connected(page: Page) -> None:
    await expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "connected")


async def go(page: Page, route: str) -> None:
    """Follow the nav's link to a view."""
    await page.get_by_test_id("nav").locator(f'a[href="#/{route}"]').click()
    await expect(page.get_by_test_id("view")).to_have_attribute("data-view", route)


async def check_view(page: Page, name: str, tmp_path: Path) -> None:
    """No serious or critical axe-core violation on the page as it is; and its screenshot
    (into screenshots/NAME.png with UPDATE_SCREENSHOT=1)."""
    if not await page.evaluate("() => typeof window.axe !== 'undefined'"):
        await page.add_script_tag(path=str(AXE))
    found: list[dict[str, Any]] = await page.evaluate(
        """async () => (await axe.run(document, {resultTypes: ['violations']})).violations
            .filter(v => v.impact === 'serious' || v.impact === 'critical')
            .map(v => ({id: v.id, impact: v.impact, help: v.help,
                        nodes: v.nodes.slice(0, 5).map(n => n.target.join(' '))}))"""
    )
    assert found == [], f"axe-core on {name}: {found}"
    SHOTS.mkdir(exist_ok=True)
    shot = (
        SHOTS / f"{name}.png" if os.environ.get("UPDATE_SCREENSHOT") else tmp_path / f"{name}.png"
    )
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


async def ids(stack: Stack, **filter: Any) -> list[str]:
    edges = (await stack.execute(IDS, f=filter))["tasks"]["edges"]
    return [e["node"]["id"] for e in edges]


async def submit(stack: Stack, task: dict[str, Any], **options: Any) -> str:
    task_id: str = (await stack.execute(SUBMIT, t=task, o=options or None))["submitTask"]["id"]
    return task_id


async def until_status(
    stack: Stack, task_id: str, status: str, within: float = 15
) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def reached() -> bool:
        seen.update((await stack.execute(TASK, id=task_id))["task"])
        return bool(seen["status"] == status)

    reached.__doc__ = f"task {task_id} is {status}"
    await eventually(reached, within=within, step=0.1)
    return seen


async def press_tab_until(page: Page, test_id: str, most: int = 30) -> None:
    """Tab through the page until the element with `test_id` has the focus (keyboard only)."""
    for _ in range(most):
        await page.keyboard.press("Tab")
        if await page.evaluate("() => document.activeElement?.dataset?.testid") == test_id:
            return
    raise AssertionError(f"{test_id} not reached with Tab within {most} presses")


@pytest.mark.timeout(90)
async def test_overview_counts_follow_the_tasks_and_a_failed_task_is_retried(
    settings: Settings, browser: Browser, tmp_path: Path
) -> None:
    key = await make_key(settings)
    async with run_api(settings, console_app(settings)) as url, run_worker(settings):
        stack = Stack(url, settings, key)
        echoes = [await submit(stack, {"echo": {"message": f"hi {i}"}}) for i in range(4)]
        # `fail` fails its first attempt (maxRetries 0: it ends FAILED), a retry succeeds;
        # the last one fails 5 times without retries.
        once = [await submit(stack, {"fail": {"failTimes": 1}}) for _ in range(3)]
        stubborn = await submit(stack, {"fail": {"failTimes": 5, "message": "bad input"}})
        running = await submit(stack, {"sleep": {"seconds": 30}})
        await submit(stack, {"echo": {"message": "later"}}, delaySeconds=600)  # QUEUED
        for task_id in echoes:
            await until_status(stack, task_id, "SUCCEEDED")
        for task_id in [*once, stubborn]:
            await until_status(stack, task_id, "FAILED")
        await until_status(stack, running, "RUNNING")

        page, errors = await open_console(browser, url, "overview", key)
        await connected(page)
        overview = page.get_by_test_id("overview")
        await expect(overview).to_have_attribute("data-loaded", "true")

        # Each status's count is what `tasks(filter: {status})` lists.
        hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
        expected = {"QUEUED": 1, "RUNNING": 1, "SUCCEEDED": 4, "FAILED": 4, "CANCELLED": 0}
        for status, count in expected.items():
            listed = await ids(stack, status=[status], createdAfter=hour_ago)
            assert len(listed) == count, (status, listed)
            await expect(page.get_by_test_id(f"count-{status}")).to_have_attribute(
                "data-count", str(count)
            )
        await expect(page.get_by_test_id("chart-throughput-summary")).to_contain_text(
            "8 finished in the window"
        )
        await expect(page.get_by_test_id("chart-failure-rate-summary")).to_contain_text("50.0%")
        await expect(overview.locator(".chart canvas")).to_have_count(4)  # uPlot drew them
        await expect(page.get_by_test_id("overview-worker")).to_have_count(1)
        default = page.locator('[data-testid=overview-queue][data-queue="default"]')
        await expect(default).to_have_attribute("data-queued", "1")
        await check_view(page, "overview", tmp_path)

        # Live: two more tasks, and the counts follow without a reload.
        for i in range(2):
            await until_status(
                stack, await submit(stack, {"echo": {"message": f"+{i}"}}), "SUCCEEDED"
            )
        await expect(page.get_by_test_id("count-SUCCEEDED")).to_have_attribute("data-count", "6")
        await expect(page.get_by_test_id("chart-throughput-summary")).to_contain_text(
            "10 finished in the window"
        )

        # The Failed view, reached with the keyboard: one group, TASK_ERROR, of 4.
        await page.locator("a.skip").focus()  # the page's first stop
        await press_tab_until(page, "nav-failed")
        await page.keyboard.press("Enter")
        await expect(page.get_by_test_id("view")).to_have_attribute("data-view", "failed")
        group = page.get_by_test_id("failed-group")
        await expect(group).to_have_count(1)
        await expect(group).to_have_attribute("data-code", "TASK_ERROR")
        await expect(group.get_by_test_id("failed-task")).to_have_count(4)
        await expect(page.get_by_test_id("nav-failed-count")).to_have_text("4")
        await check_view(page, "failed", tmp_path)

        # Retry one: its second attempt succeeds, and it leaves the group.
        first = once[0]
        await group.locator(f'[data-task-id="{first}"]').get_by_test_id("retry-task").click()
        task = await until_status(stack, first, "SUCCEEDED")
        assert task["attempts"] == 2
        await expect(group.get_by_test_id("failed-task")).to_have_count(3)
        await expect(group).to_have_attribute("data-count", "3")

        # Retry the group: the other two succeed, the stubborn one fails again.
        await group.get_by_test_id("retry-group").click()
        await expect(page.get_by_test_id("failed-message")).to_contain_text("Retried 3")
        for task_id in once[1:]:
            assert (await until_status(stack, task_id, "SUCCEEDED"))["attempts"] == 2
        await until_status(stack, stubborn, "FAILED")
        await expect(group.get_by_test_id("failed-task")).to_have_count(1)
        await expect(group.locator(f'[data-task-id="{stubborn}"]')).to_contain_text("bad input")
        await expect(page.get_by_test_id("nav-failed-count")).to_have_text("1")
        assert errors == []


@pytest.mark.timeout(90)
async def test_tasks_task_workers_queues_schedules_and_workflows(
    settings: Settings, browser: Browser, tmp_path: Path
) -> None:
    key = await make_key(settings, admin=True)  # pauseQueue wants an admin
    async with run_api(settings, console_app(settings)) as url, run_worker(settings):
        stack = Stack(url, settings, key)
        slow = [await submit(stack, {"sleep": {"seconds": 20}}, labels=["slow"]) for _ in range(3)]
        batch = [
            {"task": {"echo": {"message": f"n{i}"}}, "options": {"labels": ["bulk"]}}
            for i in range(30)
        ]
        bulk = [t["id"] for t in (await stack.execute(SUBMIT_MANY, ts=batch))["submitTasks"]]
        chatter = await submit(
            stack,
            {"chatter": {"progressSteps": 30, "logLines": 30, "intervalSeconds": 0.3}},
            labels=["demo"],
        )
        for task_id in slow:
            await until_status(stack, task_id, "RUNNING")

        page, errors = await open_console(browser, url, "tasks", key)
        await connected(page)
        rows = page.get_by_test_id("task-row")
        table = page.get_by_test_id("task-table-panel")

        async def answered(query: str) -> None:
            """the table shows what this query (filters, page) answers"""
            await expect(table).to_have_attribute("data-query", query)

        # Pages of 25 with the label filter: 30 bulk tasks are 25 then 5.
        await answered("page=1")
        await page.get_by_test_id("filter-label").fill("bulk")
        await answered("label=bulk&page=1")
        await expect(rows).to_have_count(25)
        assert set(await rows.evaluate_all("rs => rs.map(r => r.dataset.taskId)")) <= set(bulk)
        await page.get_by_test_id("page-older").click()
        await answered("label=bulk&page=2")
        await expect(rows).to_have_count(5)
        await expect(page.get_by_test_id("page-older")).to_be_disabled()
        await page.get_by_test_id("page-newer").click()
        await answered("label=bulk&page=1")
        await expect(rows).to_have_count(25)
        # by id; by type; by a created range that holds none
        await page.get_by_test_id("filter-label").fill("")
        await page.get_by_test_id("filter-id").fill(bulk[7])
        await answered(f"id={bulk[7]}&page=1")
        await expect(rows).to_have_count(1)
        await expect(rows).to_have_attribute("data-task-id", bulk[7])
        await page.get_by_test_id("filter-id").fill("")
        await page.get_by_test_id("filter-type").select_option("sleep")
        await answered("type=sleep&page=1")
        await expect(rows).to_have_count(3)
        await page.get_by_test_id("filter-created-after").fill("2999-01-01T00:00:00")
        await answered("type=sleep&createdAfter=2999-01-01T00%3A00&page=1")
        await expect(rows).to_have_count(0)
        await expect(page.get_by_test_id("empty-state")).to_contain_text("No task matches")
        await page.get_by_test_id("filter-clear").click()
        await answered("page=1")
        await expect(rows).to_have_count(25)

        # Select two running sleeps with the keyboard (Space on their checkboxes), cancel
        # them together, then retry them together. The three are RUNNING; the selection is
        # made on the label alone, whose rows stay once cancelled (a refresh under
        # status=RUNNING drops them, as soon as it runs after their cancel: a race).
        await page.get_by_test_id("filter-status-RUNNING").check()
        await page.get_by_test_id("filter-label").fill("slow")
        await answered("status=RUNNING&label=slow&page=1")
        await expect(rows).to_have_count(3)
        await page.get_by_test_id("filter-status-RUNNING").uncheck()
        await answered("label=slow&page=1")
        await expect(rows).to_have_count(3)
        for task_id in slow[:2]:
            await page.locator(f'[data-task-id="{task_id}"] [data-testid=row-select]').focus()
            await page.keyboard.press("Space")
        await expect(page.get_by_test_id("selected-count")).to_have_text("2 selected")
        await check_view(page, "tasks", tmp_path)
        await page.get_by_test_id("cancel-selected").click()
        await expect(page.get_by_test_id("bulk-message")).to_have_text("Cancelled 2 of 2 tasks.")
        for task_id in slow[:2]:
            await until_status(stack, task_id, "CANCELLED")
            await expect(
                page.locator(f'[data-testid=task-row][data-task-id="{task_id}"]')
            ).to_have_attribute("data-status", "CANCELLED")
        assert (await stack.execute(TASK, id=slow[2]))["task"]["status"] == "RUNNING"
        for task_id in slow[:2]:
            await page.locator(f'[data-task-id="{task_id}"] [data-testid=row-select]').check()
        await page.get_by_test_id("retry-selected").click()
        await expect(page.get_by_test_id("bulk-message")).to_have_text("Retried 2 of 2 tasks.")
        for task_id in slow[:2]:
            assert (await until_status(stack, task_id, "RUNNING"))["attempts"] == 2

        # A task's page: opened from its row's link with the keyboard.
        await page.get_by_test_id("filter-clear").click()
        await answered("page=1")
        link = page.locator(f'[data-task-id="{chatter}"] [data-testid=task-link]')
        await link.focus()
        await page.keyboard.press("Enter")
        view = page.get_by_test_id("task-view")
        await expect(view).to_have_attribute("data-task-id", chatter)
        await expect(view.get_by_test_id("log-line").first).to_be_visible()
        await expect(view).to_have_attribute("data-status", "RUNNING")
        await page.wait_for_function(
            "() => Number(document.querySelector('[data-testid=task-view]').dataset.progress)"
            " >= 0.3"
        )
        await check_view(page, "task", tmp_path)
        await expect(view).to_have_attribute("data-status", "SUCCEEDED")
        await expect(view.get_by_test_id("log-line")).to_have_count(30)
        await expect(view.get_by_test_id("metrics-row")).to_have_count(1)
        await expect(view.get_by_test_id("event-status")).to_have_text(
            ["QUEUED", "RUNNING", "SUCCEEDED"]
        )
        # who did each: the key that submitted it, then its worker (taskrunner.actors)
        await expect(view.get_by_test_id("timeline").get_by_test_id("actor")).to_have_text(
            [BY_THE_KEY, " · by worker", " · by worker"]
        )

        # Workers: the one worker, its heartbeat, its memory, the three sleeps it runs.
        await go(page, "workers")
        worker = page.get_by_test_id("worker")
        await expect(worker).to_have_count(1)
        await expect(worker.get_by_test_id("heartbeat")).to_contain_text("s ago")
        await expect(worker.get_by_test_id("memory")).to_contain_text("MiB")
        for task_id in slow:
            await expect(
                worker.locator(f'[data-testid=running-task][data-task-id="{task_id}"]')
            ).to_be_visible()
        await check_view(page, "workers", tmp_path)

        # Queues: pause and resume `default`.
        await go(page, "queues")
        default = page.locator('[data-testid=queue-row][data-queue="default"]')
        await expect(default).to_have_attribute("data-paused", "false")
        await default.get_by_test_id("pause-queue").click()
        await expect(default).to_have_attribute("data-paused", "true")
        await expect(default.get_by_test_id("actor")).to_have_text(BY_THE_KEY)
        paused = await stack.execute("{ queues { name paused } }")
        assert {"name": "default", "paused": True} in paused["queues"]
        await check_view(page, "queues", tmp_path)
        await default.get_by_test_id("resume-queue").click()
        await expect(default).to_have_attribute("data-paused", "false")
        resumed = await stack.execute("{ queues { name paused } }")
        assert {"name": "default", "paused": False} in resumed["queues"]

        # Schedules: pause, resume, run now.
        made = await stack.execute(
            """mutation { createSchedule(schedule: {name: "hourly echo",
                 task: {echo: {message: "tick"}}, everySeconds: 3600}) { id } }"""
        )
        schedule_id = made["createSchedule"]["id"]
        await go(page, "schedules")
        schedule = page.locator(f'[data-testid=schedule-row][data-schedule-id="{schedule_id}"]')
        await expect(schedule).to_contain_text("every hour")
        await schedule.get_by_test_id("pause-schedule").click()
        await expect(schedule).to_have_attribute("data-paused", "true")
        await expect(schedule.get_by_test_id("actor")).to_have_text(BY_THE_KEY)
        await schedule.get_by_test_id("resume-schedule").click()
        await expect(schedule).to_have_attribute("data-paused", "false")
        await schedule.get_by_test_id("trigger-schedule").click()
        triggered = await page.get_by_test_id("triggered-task").get_attribute("href")
        assert triggered is not None
        fired = await until_status(stack, triggered.removeprefix("#/task/"), "SUCCEEDED")
        assert fired["scheduleId"] == schedule_id
        await expect(schedule.locator(".run-dot")).to_have_count(1)
        await check_view(page, "schedules", tmp_path)

        # Workflows: a diamond and a chain whose first step sleeps; the chain's DAG
        # follows its steps live.
        def step(key: str, numbers: list[float], *parents: str) -> dict[str, Any]:
            return {
                "key": key,
                "task": {"sum": {"numbers": numbers}},
                "dependsOn": list(parents),
                "bind": [{"field": "numbers[]", "step": p, "path": "sum"} for p in parents],
            }

        steps = [
            step("a", [1, 2]),
            step("b", [10], "a"),
            step("c", [100], "a"),
            step("d", [1000], "b", "c"),
        ]
        diamond = (await stack.execute(WORKFLOW, w={"name": "diamond", "steps": steps}))[
            "submitWorkflow"
        ]["id"]
        nap = {"key": "nap", "task": {"sleep": {"seconds": 3}}, "dependsOn": ["fetch"]}
        fan = [
            step("fetch", [1, 2]),
            nap,
            step("side", [5], "fetch"),
            step("total", [0], "nap", "side"),
        ]
        fan[3]["bind"] = [{"field": "numbers[]", "step": "side", "path": "sum"}]
        chain = (await stack.execute(WORKFLOW, w={"name": "fetch, nap and add", "steps": fan}))[
            "submitWorkflow"
        ]["id"]
        await go(page, "workflows")
        await expect(page.get_by_test_id("workflow-row")).to_have_count(2)
        await expect(page.locator(f'[data-workflow-id="{diamond}"]')).to_have_attribute(
            "data-status", "SUCCEEDED"
        )
        await check_view(page, "workflows", tmp_path)

        await page.locator(f'[data-workflow-id="{chain}"] [data-testid=workflow-link]').click()
        nodes = page.get_by_test_id("dag-node")
        await expect(nodes).to_have_count(4)

        def node(key: str) -> Locator:
            return page.locator(f'[data-testid=dag-node][data-step="{key}"]')

        await expect(node("nap")).to_have_attribute("data-status", "RUNNING")
        await expect(node("fetch")).to_have_attribute("data-status", "SUCCEEDED")
        await expect(node("side")).to_have_attribute("data-status", "SUCCEEDED")
        await expect(node("total")).to_have_attribute("data-status", "QUEUED")
        await check_view(page, "workflow", tmp_path)
        await expect(node("total")).to_have_attribute(
            "data-status", "SUCCEEDED", timeout=15 * SECONDS
        )
        await expect(node("nap")).to_have_attribute("data-status", "SUCCEEDED")
        await expect(page.get_by_test_id("workflow-view")).to_have_attribute(
            "data-status", "SUCCEEDED"
        )

        # The diamond, laid out by dagre in ranks from left to right: a, then b and c
        # one above the other, then d.
        await page.goto(f"{url}/dashboard/#/workflow/{diamond}")
        await expect(page.get_by_test_id("workflow-view")).to_have_attribute(
            "data-workflow-id", diamond
        )
        await expect(page.locator("[data-testid=dag-node][data-status=SUCCEEDED]")).to_have_count(4)
        boxes = {}
        for key_ in "abcd":
            box = await page.locator(f'[data-testid=dag-node][data-step="{key_}"]').bounding_box()
            assert box is not None
            boxes[key_] = box
        assert boxes["a"]["x"] < boxes["b"]["x"] == boxes["c"]["x"] < boxes["d"]["x"]
        assert boxes["b"]["y"] != boxes["c"]["y"]
        await expect(page.locator("[data-testid=dag] .dag-edge")).to_have_count(4)
        assert errors == []


@pytest.mark.timeout(60)
async def test_first_run_with_the_dev_key_and_states_that_say_what_to_do(
    settings: Settings, browser: Browser, tmp_path: Path
) -> None:
    key = await make_key(settings)
    # Under `taskrunner dev` on loopback the api hands the console its dev key.
    dev = settings.model_copy(update={"dev_api_key": SecretStr(key)})
    async with run_api(dev, console_app(dev)) as url:
        page, errors = await open_console(browser, url, "overview", None)
        await connected(page)
        await expect(page.get_by_test_id("connection")).to_contain_text("dev key")
        await expect(page.get_by_test_id("overview")).to_have_attribute("data-loaded", "true")
        # nothing to paste, nothing kept: the next `make dev` may have another key
        assert await page.evaluate("() => localStorage.getItem('taskrunner.apiKey')") is None
        # Empty states say what to do.
        await go(page, "workers")
        await expect(page.get_by_test_id("empty-state")).to_contain_text("taskrunner worker")
        await go(page, "schedules")
        await expect(page.get_by_test_id("empty-state")).to_contain_text("createSchedule")
        await go(page, "workflows")
        await expect(page.get_by_test_id("empty-state")).to_contain_text("submitWorkflow")
        await go(page, "failed")
        await expect(page.get_by_test_id("empty-state")).to_contain_text("No task failed")

        # The api goes away (another URL, nothing listens): the view says what to check.
        await page.get_by_test_id("connection-box").locator("summary").click()
        await page.get_by_test_id("api-url").fill(f"http://127.0.0.1:{free_port()}")
        await page.get_by_test_id("api-key").fill(key)
        await page.get_by_test_id("connect").click()
        await go(page, "overview")
        state = page.get_by_test_id("error-state")
        await expect(state).to_have_attribute("data-code", "UNREACHABLE")
        await expect(state).to_contain_text("Is `make dev` running?")
        await check_view(page, "unreachable", tmp_path)
        assert errors == [] or all(
            "Failed to load resource" in e or "WebSocket" in e for e in errors
        )
        await page.close()

    async with run_api(settings, console_app(settings)) as url:
        # Without a dev key and with none saved: where to get one.
        page, errors = await open_console(browser, url, "overview", None)
        await expect(page.get_by_test_id("no-key")).to_contain_text("taskrunner keys create NAME")
        # the connection form is right there, in the page
        await expect(page.get_by_test_id("view").get_by_test_id("api-key")).to_be_visible()
        await page.close()
        # A refused key: the same, and the badge says so.
        page, errors = await open_console(browser, url, "tasks", "trk_not-a-key")
        await expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "refused")
        refused = page.get_by_test_id("key-refused")
        await expect(refused).to_contain_text("refused the key")
        await expect(refused).to_contain_text("taskrunner keys create NAME")
        await check_view(page, "refused", tmp_path)
        await page.close()
