"""Operations: Prometheus metrics of a real api and worker, one trace across both, JSON
logs with one schema, readiness that follows Redis, and Task.metrics."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from api.app import create_app, uvicorn_options
from taskrunner.config import Settings
from taskrunner.embedded import EmbeddedRedis, free_port
from tests.support.environment import process_env
from tests.support.processes import api_process, run, worker_process
from tests.support.servers import Servers, run_api, serve
from tests.support.stack import Stack, make_key
from tests.support.tasks import WATCH, submit
from tests.support.waiting import eventually


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a Prometheus text page."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def _until_finished(stack: Stack, task_id: str) -> None:
    await stack.subscribe(WATCH, id=task_id, within=20)


async def test_metrics_of_a_real_api_and_worker_count_what_happened(
    settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    async with (
        worker_process(settings, tmp_path / "worker.log", WORKER_METRICS_PORT=str(port)),
        api_process(settings, LOG_LEVEL="INFO") as url,
    ):
        stack = await Stack.keyed(url, settings)
        ids = [await submit(stack, {"echo": {"message": str(i)}}) for i in range(3)]
        ids.append(await submit(stack, {"fail": {"failTimes": 5}}))
        for task_id in ids:
            await _until_finished(stack, task_id)
        async with httpx.AsyncClient(timeout=10) as client:
            api = _samples((await client.get(f"{url}/metrics")).text)
            worker_page = await client.get(f"http://127.0.0.1:{port}/metrics")
        worker = _samples(worker_page.text)
    assert api[("taskrunner_tasks_submitted_total", (("task_type", "echo"),))] == 3
    assert api[("taskrunner_tasks_submitted_total", (("task_type", "fail"),))] == 1
    assert api[("taskrunner_queue_depth", ())] == 0
    assert api[("taskrunner_active_subscriptions", ())] == 0  # all completed
    anonymous = (("operation", "anonymous"),)
    assert api[("taskrunner_graphql_request_duration_seconds_count", anonymous)] >= 4
    done = ("taskrunner_tasks_completed_total", (("status", "SUCCEEDED"), ("task_type", "echo")))
    assert worker[done] == 3
    failed = ("taskrunner_tasks_completed_total", (("status", "FAILED"), ("task_type", "fail")))
    assert worker[failed] == 1
    echo = (("task_type", "echo"),)
    assert worker[("taskrunner_task_duration_seconds_count", echo)] == 3
    assert worker[("taskrunner_task_queue_wait_seconds_count", echo)] == 3
    assert worker[("taskrunner_task_duration_seconds_bucket", (("le", "+Inf"), *echo))] == 3
    assert worker[("taskrunner_tasks_running", ())] == 0


async def test_one_trace_spans_the_request_the_worker_and_their_calls(settings: Settings) -> None:
    code, out, err = await run(env=process_env(settings), module="tests.support.trace_probe")
    assert code == 0, err
    spans = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    (task,) = [s for s in spans if s["name"] == "task webScrape"]
    assert task["kind"] == "CONSUMER" and task["attributes"]["taskrunner.attempt"] == "1"
    by_id = {s["span_id"]: s for s in spans}
    request = by_id[task["parent"]]  # the worker's run is a child of the submitting request
    assert request["kind"] == "SERVER" and request["name"] == "POST /graphql"
    assert request["trace_id"] == task["trace_id"]

    def children(span: dict[str, Any]) -> list[dict[str, Any]]:
        return [s for s in spans if s["parent"] == span["span_id"]]

    def statements(calls: list[dict[str, Any]]) -> str:
        return "\n".join(
            s["attributes"]["db.statement"]
            for s in calls
            if s["attributes"].get("db.system") == "postgresql"
        )

    # the request's and the run's database calls, and the page the run fetched over HTTP:
    # the api reads the key and inserts the task, the worker updates it and writes events
    assert "SELECT" in statements(children(request))
    assert "INSERT INTO task " in statements(children(request))
    run_calls = children(task)
    assert "UPDATE task" in statements(run_calls)
    assert "INSERT INTO task_event" in statements(run_calls)
    (fetch,) = [s for s in run_calls if s["kind"] == "CLIENT" and s["name"] == "GET"]
    served = [s for s in spans if s["parent"] == fetch["span_id"] and s["kind"] == "SERVER"]
    assert [s["name"] for s in served] == ["GET /healthz"]  # traced on the other side too
    assert {s["trace_id"] for s in [request, task, fetch, *run_calls, *served]} == {
        task["trace_id"]
    }

    # Redis: the request enqueues the task, the run reports to the api's subscribers
    def redis(calls: list[dict[str, Any]]) -> list[str]:
        return [s["name"] for s in calls if s["attributes"].get("db.system") == "redis"]

    assert redis(children(request)), [s["name"] for s in children(request)]
    assert redis(run_calls), [s["name"] for s in run_calls]
    # and no call is a trace of its own (the worker polls Redis 20 times a second)
    assert [s["name"] for s in spans if s["kind"] == "CLIENT" and not s["parent"]] == []


async def test_logs_are_json_lines_with_one_schema(settings: Settings, tmp_path: Path) -> None:
    worker_log = tmp_path / "worker.log"
    api_log = tmp_path / "api.log"
    async with (
        worker_process(settings, worker_log, LOG_LEVEL="INFO", LOG_FORMAT="json"),
        api_process(settings, api_log, LOG_LEVEL="INFO", LOG_FORMAT="json") as url,
    ):
        stack = Stack(url, settings, await make_key(settings))
        task_id = await submit(stack, {"echo": {"message": "logged"}})
        await _until_finished(stack, task_id)
        failing = await submit(stack, {"fail": {"failTimes": 5}})
        await _until_finished(stack, failing)
    api_lines = [json.loads(x) for x in api_log.read_text().splitlines() if x.startswith("{")]
    worker_lines = [json.loads(x) for x in worker_log.read_text().splitlines() if x.startswith("{")]
    for line in api_lines + worker_lines:
        assert {"timestamp", "level", "event", "logger"} <= line.keys(), line
    (submitted,) = [
        x for x in api_lines if x["event"] == "task_submitted" and x["task_id"] == task_id
    ]
    assert submitted["task_type"] == "echo" and submitted["level"] == "info"
    assert len(submitted["request_id"]) >= 8
    mine = [x for x in worker_lines if x.get("task_id") == task_id]
    assert [x["event"] for x in mine if x["event"].startswith("task_")] == [
        "task_started",
        "task_succeeded",
    ]
    assert all(x["task_type"] == "echo" and x["attempt"] == 1 for x in mine)
    # arq still says what it does, but not twice per task as well as task_started & co.
    arq_lines = [x["event"] for x in worker_lines if x["logger"] == "arq.worker"]
    assert any(line.startswith("Starting worker for") for line in arq_lines), arq_lines
    assert not [line for line in arq_lines if "→" in line or "←" in line]
    (failed,) = [
        x for x in worker_lines if x.get("task_id") == failing and x["event"] == "task_failed"
    ]
    assert failed["level"] == "warning" and failed["error_code"] == "TASK_ERROR"


async def test_readyz_follows_redis_down_and_back(settings: Settings, tmp_path: Path) -> None:
    redis = EmbeddedRedis(tmp_path / "redis")
    own = settings.model_copy(update={"redis_url": redis.start()})
    try:
        async with run_api(own) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
            assert (await client.get("/readyz")).status_code == 200
            redis.stop()
            down = await client.get("/readyz")
            assert down.status_code == 503
            assert down.json()["redis"].startswith("error") and down.json()["postgres"] == "ok"
            # which dependency is down, but not its exception's text (hosts, ports, errno)
            assert down.json()["redis"] == "error (details in the api log)", down.text
            assert str(redis.port) not in down.text
            assert (await client.get("/healthz")).status_code == 200  # alive all the same
            redis.start()

            async def ready() -> bool:
                """the api is ready again"""
                return (await client.get("/readyz")).status_code == 200

            await eventually(ready, within=10, step=0.1)
    finally:
        redis.stop()


async def test_readyz_names_postgres_down_without_its_error_text(
    settings: Settings, servers: Servers
) -> None:
    database = make_url(settings.require_database_url()).database
    assert database is not None
    async with run_api(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        assert (await client.get("/readyz")).status_code == 200
        servers.postgres.psql(
            f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false; '
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'"
        )
        try:
            down = await client.get("/readyz")
        finally:
            servers.postgres.psql(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    assert down.status_code == 503
    assert down.json()["postgres"] == "error (details in the api log)", down.text
    assert down.json()["redis"] == "ok"
    assert database not in down.text and "connection" not in down.text.lower()


async def test_traces_redact_signatures_and_keys_in_links(settings: Settings) -> None:
    """Server spans of the api and client spans of httpx, old and new HTTP conventions."""
    env = process_env(settings, OTEL_SEMCONV_STABILITY_OPT_IN="http/dup")
    code, out, err = await run(env=env, module="tests.support.redaction_probe")
    assert code == 0, err
    spans = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert {s["kind"] for s in spans} >= {"SERVER", "CLIENT"}
    urls = [
        value
        for s in spans
        for name, value in s["attributes"].items()
        if name in ("http.url", "url.full", "url.query", "http.target")
    ]
    assert any("view=tasks" in u for u in urls), urls  # what is not secret stays
    assert any("signature=REDACTED" in u for u in urls), urls
    assert any("key=REDACTED" in u for u in urls), urls
    leaked = [s for s in spans if "s3cret" in json.dumps(s)]
    assert leaked == []


async def test_access_log_lines_redact_signatures_and_keys(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """uvicorn's access log (off at the default levels, but one setting away)."""
    caplog.set_level(logging.INFO, logger="uvicorn.access")
    async with (
        serve(
            create_app(settings),
            log_level="info",
            log_config=None,  # as `taskrunner api` runs it: records reach our handlers
            **uvicorn_options(settings),
        ) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        await client.get("/healthz?expires=1&signature=lower-s3cret&SIG=upper-s3cret")
        await client.get("/dashboard/?key=trk_dashboard-s3cret&view=tasks")
    lines = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert len(lines) == 2, lines
    assert "s3cret" not in "\n".join(lines), lines
    assert "signature=REDACTED" in lines[0] and "expires=1" in lines[0]
    assert "key=REDACTED" in lines[1] and "view=tasks" in lines[1]


async def test_task_metrics_show_each_attempt(stack: Stack) -> None:
    query = """query($id: ID!) { task(id: $id) { metrics { queueWaitSeconds runSeconds
      attempts { attempt workerId status queueWaitSeconds runSeconds peakMemoryMb finishedAt }
    } } }"""
    task_id = await submit(stack, {"sleep": {"seconds": 0.3}})
    await _until_finished(stack, task_id)
    metrics = (await stack.execute(query, id=task_id))["task"]["metrics"]
    (attempt,) = metrics["attempts"]
    assert attempt["attempt"] == 1 and attempt["status"] == "SUCCEEDED"
    assert 0.3 <= attempt["runSeconds"] < 5 and metrics["runSeconds"] == attempt["runSeconds"]
    assert 0 <= attempt["queueWaitSeconds"] < 5
    assert metrics["queueWaitSeconds"] == attempt["queueWaitSeconds"]
    assert attempt["peakMemoryMb"] > 10  # a Python process holds more than that
    assert ":" in attempt["workerId"]
    retried = await submit(stack, {"fail": {"failTimes": 1}}, maxRetries=1)
    await _until_finished(stack, retried)
    attempts = (await stack.execute(query, id=retried))["task"]["metrics"]["attempts"]
    assert [(a["attempt"], a["status"]) for a in attempts] == [(1, "QUEUED"), (2, "SUCCEEDED")]
    fresh = await submit(stack, {"sleep": {"seconds": 30}}, delaySeconds=60)
    waiting = (await stack.execute(query, id=fresh))["task"]["metrics"]
    assert waiting == {"queueWaitSeconds": None, "runSeconds": None, "attempts": []}
