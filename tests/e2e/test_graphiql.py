"""GraphiQL as a first run meets it, in headless chromium against a real api and worker:
under `taskrunner dev` (DEV_API_KEY on a loopback HOST) the page comes authorised, its
explorer shows the schema, and its example tabs run as they are: Submit, then Follow,
whose events appear, with no error in the browser's console. Elsewhere the page says where
the key goes. The page stays public after edits put them in its URL."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from playwright.async_api import Page, expect
from pydantic import SecretStr

from api.graphiql import EXAMPLES
from taskrunner.config import Settings
from tests.support.browser import chromium, console_errors
from tests.support.servers import run_api, run_worker
from tests.support.stack import make_key

SECONDS = 1000  # playwright counts milliseconds


async def response_json(page: Page) -> Any:
    """What the result pane shows, parsed."""
    text = await page.locator(".graphiql-response .CodeMirror").first.evaluate(
        "el => el.CodeMirror.getValue()"
    )
    return json.loads(text) if text.strip() else None


async def run_tab(page: Page, name: str) -> None:
    tab = page.locator(".graphiql-tab", has_text=name).first
    if await tab.get_attribute("aria-selected") != "true":
        await tab.click()
        # the tab's document is in the editor, and GraphiQL has read its operation's name
        await expect(page.locator(".graphiql-query-editor")).to_contain_text(name)
        await page.wait_for_timeout(500)
    await page.locator(".graphiql-execute-button").click()


@pytest.fixture
async def dev_settings(settings: Settings) -> Settings:
    key = await make_key(settings, "dev", name="dev")
    return settings.model_copy(update={"dev_api_key": SecretStr(key), "host": "127.0.0.1"})


async def test_under_dev_the_tabs_run_as_they_are(dev_settings: Settings) -> None:
    async with run_worker(dev_settings), run_api(dev_settings) as url, chromium() as browser:
        page = await browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(15 * SECONDS)
        errors = console_errors(page)
        await page.goto(f"{url}/graphql")
        tabs = page.locator(".graphiql-tab")
        await expect(tabs).to_have_count(len(EXAMPLES))
        for name, _, _ in EXAMPLES:
            await expect(tabs.filter(has_text=name)).to_have_count(1)

        # the explorer lists the schema's fields: the introspection was authorised
        await page.get_by_label("Show GraphiQL Explorer").click()
        await expect(page.get_by_text("submitTask", exact=True).first).to_be_visible()

        await run_tab(page, "Submit")
        await page.wait_for_function(
            "() => document.querySelector('.graphiql-response').innerText.includes('QUEUED')"
        )
        submitted = (await response_json(page))["data"]["submitTask"]
        await run_tab(page, "Follow")
        await page.wait_for_function(
            "() => document.querySelector('.graphiql-response').innerText.includes('SUCCEEDED')",
            timeout=20 * SECONDS,
        )
        final = (await response_json(page))["data"]["taskUpdates"]
        assert final["__typename"] == "StatusChanged" and final["status"] == "SUCCEEDED"
        for name, field in (
            ("List", "tasks"),
            ("Schedule", "createSchedule"),
            ("Workflow", "submitWorkflow"),
        ):  # the other tabs run as they are too
            await run_tab(page, name)
            await page.wait_for_function(
                "field => document.querySelector('.graphiql-response').innerText"
                '.includes(`"${field}"`)',
                arg=field,
            )
            answer = await response_json(page)
            assert "errors" not in answer and answer["data"][field], answer
        async with httpx.AsyncClient() as client:  # the task the Follow tab showed
            answer = await client.post(
                f"{url}/graphql",
                json={
                    "query": "query($id: ID!) { task(id: $id) { status } }",
                    "variables": {"id": submitted["id"]},
                },
                headers={"Authorization": f"Bearer {dev_settings.dev_api_key.get_secret_value()}"},
            )
        assert answer.json()["data"]["task"]["status"] == "SUCCEEDED"
        assert errors == [], errors


async def test_elsewhere_the_page_says_where_the_key_goes(settings: Settings) -> None:
    """Off loopback: no key in the page; the first tab says where one goes; a key pasted
    in one tab's Headers serves the others, over the websocket too."""
    public = settings.model_copy(update={"dev_api_key": SecretStr("trk_x"), "host": "0.0.0.0"})
    key = await make_key(settings, "pasted")
    async with run_worker(public), run_api(public) as url, chromium() as browser:
        page = await browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(15 * SECONDS)
        errors = console_errors(page)
        await page.goto(f"{url}/graphql")
        assert "trk_x" not in await page.content()
        await expect(page.locator(".graphiql-query-editor")).to_contain_text("needs an API key")
        await run_tab(page, "Submit")
        await page.wait_for_function(
            "() => document.querySelector('.graphiql-response').innerText"
            ".includes('UNAUTHENTICATED')"
        )
        await page.get_by_text("Headers", exact=True).click()
        headers = page.locator(".graphiql-editor-tool .CodeMirror").last
        await expect(headers).to_contain_text("PASTE-YOUR-KEY")
        await headers.click()  # typed, as a user pastes it
        await page.keyboard.press("Control+A")
        await page.keyboard.insert_text(json.dumps({"Authorization": f"Bearer {key}"}))
        await expect(headers).to_contain_text(key)
        await run_tab(page, "Submit")
        await page.wait_for_function(
            "() => document.querySelector('.graphiql-response').innerText.includes('QUEUED')"
        )
        await run_tab(page, "Follow")  # its own Headers still say PASTE-YOUR-KEY
        await page.wait_for_function(
            "() => document.querySelector('.graphiql-response').innerText.includes('SUCCEEDED')",
            timeout=20 * SECONDS,
        )
        unauthorised = [e for e in errors if "401" in e]  # the first Submit's, on purpose
        assert [e for e in errors if e not in unauthorised] == [], errors
        async with httpx.AsyncClient() as client:
            config = await client.get(f"{url}/dashboard/config.json")
        assert config.status_code in (200, 404)  # 404: the console is not built here
        if config.status_code == 200:
            assert config.json() == {}  # the key is not handed out off loopback


async def test_the_page_stays_public_after_an_edit_puts_it_in_the_url(settings: Settings) -> None:
    async with run_api(settings) as url, httpx.AsyncClient() as client:
        edited = await client.get(
            f"{url}/graphql",
            params={"q": "{ limits { maxBatchSize } }", "variables": "{}"},
            headers={"Accept": "text/html"},
        )
        assert edited.status_code == 200, edited.text
        assert "TASKRUNNER" in edited.text
        request = await client.get(  # a GraphQL GET request still needs a key
            f"{url}/graphql",
            params={"query": "{ limits { maxBatchSize } }"},
            headers={"Accept": "text/html"},
        )
        assert request.status_code == 401


async def test_the_dashboard_gets_the_dev_key_only_under_dev(dev_settings: Settings) -> None:
    async with run_api(dev_settings) as url, httpx.AsyncClient() as client:
        config = await client.get(f"{url}/dashboard/config.json")
    if config.status_code == 404:
        pytest.fail("frontend-examples/dashboard/dist is not built: run `make dashboard`")
    assert config.json() == {"devKey": dev_settings.dev_api_key.get_secret_value()}
    assert config.headers["cache-control"] == "no-store"
