"""Browsers on other origins (ALLOWED_ORIGINS), in headless chromium: a page served from
another loopback port submits a task over HTTP (CORS, with its preflight) and follows it
over graphql-transport-ws when its origin is allowed; when it is not, both are refused
with an error the page can read, naming ALLOWED_ORIGINS. Also: the api's own pages, and
callers that send no Origin, are not concerned; a bad ALLOWED_ORIGINS stops start-up."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from api.app import create_app
from taskrunner.config import Settings, load_settings
from taskrunner.embedded import free_port
from taskrunner.errors import ConfigError
from tests.support.browser import chromium, console_errors
from tests.support.servers import run_api, run_worker, serve
from tests.support.stack import make_key

PAGE = """<!doctype html>
<html lang="en"><head><title>a page of another origin</title></head><body><script>
window.run = async (api, key) => {
  const out = { events: [] };
  try {
    const response = await fetch(api + "/graphql", {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: "Bearer " + key },
      body: JSON.stringify({
        query: 'mutation { submitTask(task: {echo: {message: "hi"}}) { id } }',
      }),
    });
    out.status = response.status;
    out.body = await response.json();
  } catch (error) {
    out.fetchError = String(error);
  }
  const id = out.body && out.body.data ? out.body.data.submitTask.id : "none";
  await new Promise((resolve) => {
    const ws = new WebSocket(api.replace("http", "ws") + "/graphql", "graphql-transport-ws");
    const timer = setTimeout(() => { out.timedOut = true; ws.close(); }, 15000);
    ws.onopen = () => ws.send(JSON.stringify({
      type: "connection_init", payload: { Authorization: "Bearer " + key },
    }));
    ws.onmessage = (message) => {
      const data = JSON.parse(message.data);
      if (data.type === "connection_ack") {
        const query = "subscription($id: ID!) { taskUpdates(id: $id) {"
          + " __typename ... on StatusChanged { status } } }";
        const payload = { query, variables: { id } };
        ws.send(JSON.stringify({ id: "1", type: "subscribe", payload }));
      } else if (data.type === "next") {
        out.events.push(data.payload.data.taskUpdates);
      } else if (data.type === "error") {
        out.subscribeError = data.payload;
      } else if (data.type === "complete") {
        ws.close(1000);
      }
    };
    ws.onclose = (event) => {
      out.close = { code: event.code, reason: event.reason };
      clearTimeout(timer);
      resolve();
    };
  });
  return out;
};
</script></body></html>"""


async def _page_calls(settings: Settings, allowed: str | None) -> dict[str, Any]:
    """What the page at another port gets from the api (its origin added to
    ALLOWED_ORIGINS when `allowed` is "mine")."""
    page_port = free_port()
    origin = f"http://127.0.0.1:{page_port}"
    if allowed is not None:
        settings = settings.model_copy(
            update={"allowed_origins": origin if allowed == "mine" else allowed}
        )
    key = await make_key(settings)
    pages = Starlette(routes=[Route("/", lambda request: HTMLResponse(PAGE))])
    async with (
        run_api(settings) as api,
        run_worker(settings),
        serve(pages, page_port) as page_url,
        chromium() as browser,
    ):
        page = await browser.new_page()
        await page.goto(page_url)
        assert await page.evaluate("location.origin") == origin
        errors = console_errors(page)
        out: dict[str, Any] = await page.evaluate(
            "([api, key]) => window.run(api, key)", [api, key]
        )
        out["console"] = errors
        return out


async def test_an_allowed_origin_submits_and_follows(settings: Settings) -> None:
    out = await _page_calls(settings, "mine")
    assert out.get("status") == 200 and "errors" not in out["body"], out
    assert out["events"] and out["events"][-1] == {
        "__typename": "StatusChanged",
        "status": "SUCCEEDED",
    }, out
    assert out["close"]["code"] == 1000, out
    assert not out.get("timedOut"), out


async def test_any_origin_with_a_star(settings: Settings) -> None:
    out = await _page_calls(settings, "*")
    assert out.get("status") == 200, out
    assert out["events"] and out["events"][-1]["status"] == "SUCCEEDED", out


async def test_another_origin_is_refused_by_default_and_told_why(settings: Settings) -> None:
    out = await _page_calls(settings, None)
    assert out.get("status") == 403, out
    (error,) = out["body"]["errors"]
    assert error["extensions"]["code"] == "FORBIDDEN", out
    assert "ALLOWED_ORIGINS" in error["message"] and "127.0.0.1" in error["message"], out
    assert out["close"]["code"] == 4403, out
    assert "ALLOWED_ORIGINS" in out["close"]["reason"], out
    assert out["events"] == [], out


async def test_same_origin_and_no_origin_are_not_concerned(settings: Settings) -> None:
    key = await make_key(settings)
    app = create_app(settings)
    async with run_api(settings, app) as api:
        query = {"query": "{ taskTypes { name } }"}
        auth = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=api, timeout=10) as client:
            plain = await client.post("/graphql", json=query, headers=auth)
            own = await client.post("/graphql", json=query, headers={**auth, "Origin": api})
            other = await client.post(
                "/graphql", json=query, headers={**auth, "Origin": "http://127.0.0.1:1"}
            )
            preflight = await client.options(
                "/graphql",
                headers={
                    "Origin": "http://127.0.0.1:1",
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization,content-type",
                },
            )
    assert plain.status_code == own.status_code == 200, (plain.text, own.text)
    assert other.status_code == 403, other.text
    # the preflight passes (the page is to read the 403 of the request itself)
    assert preflight.status_code == 204, preflight.text


@pytest.mark.parametrize("value", ["localhost:5173", "http://a.example/path", "ftp://x"])
def test_a_bad_allowed_origin_stops_start_up(value: str) -> None:
    with pytest.raises(ConfigError, match="ALLOWED_ORIGINS"):
        load_settings(_env_file=None, allowed_origins=value)
