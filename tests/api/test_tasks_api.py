"""The task API over real HTTP: failures, timeouts, batches, idempotency, listing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from gql.transport.exceptions import TransportQueryError
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import actors, connections
from taskrunner.queries import TaskCriteria, list_tasks
from taskrunner.submissions import Submission, insert
from tests.support.stack import Stack
from tests.support.tasks import WATCH

T = actors.key("tester", "tester")  # the actor of the changes these tests make


async def _errors(stack: Stack, query: str, **variables: Any) -> list[dict[str, Any]]:
    with pytest.raises(TransportQueryError) as err:
        await stack.execute(query, **variables)
    assert err.value.errors
    return err.value.errors


async def _count(engine: AsyncEngine, table: str) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(sa.text(f"SELECT count(*) FROM {table}")) or 0)


async def test_sleep_past_its_timeout_fails_with_timeout_within_3s(stack: Stack) -> None:
    started = time.monotonic()
    task_id = (
        await stack.execute(
            "mutation { submitTask(task: {sleep: {seconds: 10}}, options: {timeoutSeconds: 1})"
            " { id timeoutSeconds } }"
        )
    )["submitTask"]["id"]
    events = [e["taskUpdates"] for e in await stack.subscribe(WATCH, id=task_id)]
    assert time.monotonic() - started < 3
    assert events[-1]["status"] == "FAILED"
    assert events[-1]["error"]["code"] == "TIMEOUT"
    lines = [e["line"] for e in events if e["__typename"] == "LogAppended"]
    assert any(line.startswith("task_killed") for line in lines)


async def test_an_exception_in_the_task_fails_it_with_its_type_message_and_traceback(
    stack: Stack,
) -> None:
    task_id = (
        await stack.execute('mutation { submitTask(task: {fail: {message: "boom"}}) { id } }')
    )["submitTask"]["id"]
    events = [e["taskUpdates"] for e in await stack.subscribe(WATCH, id=task_id)]
    assert events[-1]["status"] == "FAILED"
    assert events[-1]["error"] == {
        "code": "TASK_ERROR",
        "message": "TaskFailedOnPurpose: boom (attempt 1)",
    }
    logs = [e for e in events if e["__typename"] == "LogAppended"]
    assert logs and logs[0]["level"] == "error" and "Traceback" in logs[0]["line"]
    task = (
        await stack.execute(
            "query($id: ID!) { task(id: $id) { status attempts error { code } } }", id=task_id
        )
    )["task"]
    assert task == {"status": "FAILED", "attempts": 1, "error": {"code": "TASK_ERROR"}}


async def test_sum_adds_the_numbers(stack: Stack) -> None:
    task_id = (
        await stack.execute(
            "mutation { submitTask(task: {sum: {numbers: [1, 2.5, -0.5]}}) { id } }"
        )
    )["submitTask"]["id"]
    events = [e["taskUpdates"] for e in await stack.subscribe(WATCH, id=task_id)]
    assert events[-1]["result"] == {"sum": 3.0}


SUBMIT_MANY = """
mutation($tasks: [TaskSubmissionInput!]!) { submitTasks(tasks: $tasks) { id type status labels } }
"""


async def test_submit_tasks_inserts_a_batch(api: Stack, engine: AsyncEngine) -> None:
    batch = [
        {"task": {"echo": {"message": "a"}}, "options": {"labels": ["batch"]}},
        {"task": {"sum": {"numbers": [1, 2]}}},
        {"task": {"sleep": {"seconds": 0}}},
    ]
    created = (await api.execute(SUBMIT_MANY, tasks=batch))["submitTasks"]
    assert [t["type"] for t in created] == ["echo", "sum", "sleep"]
    assert {t["status"] for t in created} == {"QUEUED"}
    assert created[0]["labels"] == ["batch"]
    assert await _count(engine, "task") == 3


async def test_a_bad_item_rejects_the_whole_batch_naming_its_index(
    api: Stack, engine: AsyncEngine
) -> None:
    batch = [{"task": {"echo": {"message": "a"}}}, {"task": {"sum": {"numbers": []}}}]
    (error,) = await _errors(api, SUBMIT_MANY, tasks=batch)
    assert error["extensions"]["code"] == "BAD_INPUT"
    assert "tasks[1].task.sum.numbers" in error["message"]
    assert await _count(engine, "task") == 0


async def test_a_bad_option_in_a_batch_names_its_index(api: Stack, engine: AsyncEngine) -> None:
    batch = [
        {"task": {"echo": {"message": "a"}}},
        {"task": {"echo": {"message": "b"}}, "options": {"priority": 5000}},
    ]
    (error,) = await _errors(api, SUBMIT_MANY, tasks=batch)
    assert error["extensions"] == {"code": "BAD_INPUT", "field": "tasks[1].options.priority"}
    assert error["message"].startswith("tasks[1].options.priority: must be between")
    (empty,) = await _errors(api, SUBMIT_MANY, tasks=[])
    assert empty["extensions"]["code"] == "BAD_INPUT"
    assert await _count(engine, "task") == 0


async def test_a_batch_over_max_batch_size_is_limit_exceeded(api: Stack) -> None:
    batch = [{"task": {"echo": {"message": "a"}}}] * (api.settings.max_batch_size + 1)
    (error,) = await _errors(api, SUBMIT_MANY, tasks=batch)
    assert error["extensions"]["code"] == "LIMIT_EXCEEDED"
    assert "MAX_BATCH_SIZE" in error["message"]


IDEMPOTENT = """
mutation($key: String!, $m: String!) {
  submitTask(task: {echo: {message: $m}}, options: {idempotencyKey: $key}) {
    id idempotencyKey input
  }
}"""


async def test_the_same_idempotency_key_returns_the_first_task_unchanged(
    api: Stack, engine: AsyncEngine
) -> None:
    results = await asyncio.gather(
        *(api.execute(IDEMPOTENT, key="k-1", m=f"try {i}") for i in range(8))
    )
    tasks = [r["submitTask"] for r in results]
    assert len({t["id"] for t in tasks}) == 1
    assert len({t["input"]["message"] for t in tasks}) == 1
    assert await _count(engine, "task") == 1
    assert await _count(engine, "task_event") == 1
    other = (await api.execute(IDEMPOTENT, key="k-2", m="x"))["submitTask"]
    assert other["id"] != tasks[0]["id"]


async def test_one_insert_keeps_order_labels_and_first_tasks_of_keys(engine: AsyncEngine) -> None:
    """A group's tasks go in as one statement: each back in its place, labels intact, a
    key used twice in the group giving the first task, one QUEUED event per new task."""
    submissions = [
        Submission(
            "echo",
            {"message": str(i)},
            60,
            labels=("all", f"n{i}"),
            idempotency_key="twice" if i in (1, 3) else None,
        )
        for i in range(5)
    ]
    async with connections.transaction(engine) as conn:
        (tasks,), events = await insert(conn, [("o", submissions, T)])
    assert [t.input["message"] for t in tasks] == ["0", "1", "2", "1", "4"]
    assert tasks[3] == tasks[1]
    assert [t.labels for t in tasks] == [["all", f"n{i}"] for i in (0, 1, 2, 1, 4)]
    assert [e.task_id for e in events] == [tasks[i].id for i in (0, 1, 2, 4)]
    assert all(e.seq == 1 and e.data == {"status": "QUEUED", "actor": T} for e in events)
    created = [tasks[i].created_at for i in (0, 1, 2, 4)]
    assert created == sorted(created)
    assert await _count(engine, "task") == 4


async def test_a_label_filter_pages_newest_first_through_every_match(
    engine: AsyncEngine,
) -> None:
    """With a label, a page's ids come from the index first, then their rows: same order,
    same pages, same hasNextPage as any other filter."""
    submissions = [
        Submission("echo", {"message": str(i)}, 60, labels=("page",) if i % 3 else ())
        for i in range(12)
    ]
    async with connections.transaction(engine) as conn:
        await insert(conn, [("o", submissions[:6], T)])
        await insert(conn, [("o", submissions[6:], T)])
        await insert(conn, [("someone-else", submissions, T)])
    labelled = TaskCriteria(label="page")
    seen, after, more = [], None, True
    while more:
        page = await list_tasks(engine=engine, owner="o", filter=labelled, first=3, after=after)
        seen.extend(page.tasks)
        more = page.has_next_page
        after = page.cursor_of(page.tasks[-1]) if page.tasks else None
        assert len(page.tasks) == 3 or not more
    assert [t.input["message"] for t in seen] == [str(i) for i in reversed(range(12)) if i % 3]
    assert all(t.owner == "o" and t.labels == ["page"] for t in seen)
    newest = [(t.created_at, t.id) for t in seen]
    assert newest == sorted(newest, reverse=True)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ("{timeoutSeconds: 0}", "options.timeoutSeconds"),
        ("{timeoutSeconds: 100000}", "options.timeoutSeconds"),
        ("{delaySeconds: -1}", "options.delaySeconds"),
        ('{delaySeconds: 1, runAt: "2030-01-01T00:00:00Z"}', "options"),
        ('{runAt: "2030-01-01T00:00:00"}', "options.runAt"),
        ('{idempotencyKey: ""}', "options.idempotencyKey"),
    ],
)
async def test_bad_options_are_bad_input_naming_the_option(
    api: Stack, engine: AsyncEngine, options: str, field: str
) -> None:
    (error,) = await _errors(
        api,
        f'mutation {{ submitTask(task: {{echo: {{message: "x"}}}}, options: {options}) {{ id }} }}',
    )
    assert error["extensions"]["code"] == "BAD_INPUT"
    assert error["message"].startswith(field)
    assert await _count(engine, "task") == 0


async def test_task_types_lists_the_catalog_with_json_schemas(api: Stack) -> None:
    types = (await api.execute("{ taskTypes { name description inputSchema } }"))["taskTypes"]
    by_name = {t["name"]: t for t in types}
    assert {"echo", "sleep", "sum", "fail"} <= set(by_name)
    assert by_name["sleep"]["inputSchema"]["properties"]["seconds"]["minimum"] == 0
    assert by_name["sum"]["inputSchema"]["required"] == ["numbers"]
    assert all(t["description"] for t in types)


async def test_task_events_page_with_first_and_after(stack: Stack) -> None:
    task_id = (await stack.execute('mutation { submitTask(task: {echo: {message: "e"}}) { id } }'))[
        "submitTask"
    ]["id"]
    await stack.subscribe(WATCH, id=task_id)
    query = """query($id: ID!, $after: String) {
      task(id: $id) { events(first: 2, after: $after) { cursor ... on StatusChanged { status } } }
    }"""
    first = (await stack.execute(query, id=task_id))["task"]["events"]
    rest = (await stack.execute(query, id=task_id, after=first[-1]["cursor"]))["task"]["events"]
    assert [e["status"] for e in first + rest] == ["QUEUED", "RUNNING", "SUCCEEDED"]
    for bad in ("not-a-cursor", "²", "9" * 30):
        (error,) = await _errors(stack, query, id=task_id, after=bad)
        assert error["extensions"] == {"code": "BAD_INPUT", "field": "after"}
    (error,) = await _errors(
        stack, "query($id: ID!) { task(id: $id) { events(first: -1) { cursor } } }", id=task_id
    )
    assert error["extensions"] == {"code": "BAD_INPUT", "field": "first"}


async def test_tasks_filters_by_status_type_and_label(api: Stack) -> None:
    await api.execute(
        SUBMIT_MANY,
        tasks=[
            {"task": {"echo": {"message": "a"}}, "options": {"labels": ["red"]}},
            {"task": {"sum": {"numbers": [1]}}, "options": {"labels": ["blue"]}},
        ],
    )
    query = """query($f: TaskFilter) { tasks(filter: $f) { edges { node { type labels } } } }"""

    async def types(f: dict[str, Any]) -> list[str]:
        edges = (await api.execute(query, f=f))["tasks"]["edges"]
        return sorted(e["node"]["type"] for e in edges)

    assert await types({"label": "red"}) == ["echo"]
    assert await types({"type": ["sum"]}) == ["sum"]
    assert await types({"status": ["QUEUED"]}) == ["echo", "sum"]
    assert await types({"status": ["RUNNING"]}) == []
    assert await types({"createdAfter": "2000-01-01T00:00:00Z"}) == ["echo", "sum"]
    assert await types({"createdBefore": "2000-01-01T00:00:00Z"}) == []
    (error,) = await _errors(api, "{ tasks(first: 0) { edges { cursor } } }")
    assert error["extensions"]["code"] == "BAD_INPUT"
    (error,) = await _errors(api, '{ tasks(after: "@@") { edges { cursor } } }')
    assert error["extensions"] == {"code": "BAD_INPUT", "field": "after"}


async def test_health_and_readiness(api: Stack) -> None:
    async with httpx.AsyncClient(base_url=api.url) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "postgres": "ok", "migrations": "ok", "redis": "ok"}


PROCESSED = """
query($scope: String!, $key: String!) {
  processed(scope: $scope, key: $key) { key processed processedAt latestTask { id status } }
}"""


async def test_processed_tells_whether_a_key_was_done_and_its_latest_task(stack: Stack) -> None:
    before = (await stack.execute(PROCESSED, scope="search", key="abc"))["processed"]
    assert before == {"key": "search:abc", "processed": False, "processedAt": None,
                      "latestTask": None}  # fmt: skip
    first = (
        await stack.execute(
            'mutation { submitTask(task: {echo: {message: "1"}}, '
            'options: {labels: ["search:abc"]}) { id } }'
        )
    )["submitTask"]["id"]
    await stack.subscribe(WATCH, id=first)
    second = (
        await stack.execute(
            "mutation { submitTask(task: {sleep: {seconds: 30}}, "
            'options: {idempotencyKey: "search:abc"}) { id } }'
        )
    )["submitTask"]["id"]
    after = (await stack.execute(PROCESSED, scope="search", key="abc"))["processed"]
    assert after["processed"] is True and after["processedAt"] is not None
    assert after["latestTask"]["id"] == second
    other = (await stack.execute(PROCESSED, scope="search", key="zzz"))["processed"]
    assert other["processed"] is False
    await stack.execute("mutation($id: ID!) { cancelTask(id: $id) { id } }", id=second)
