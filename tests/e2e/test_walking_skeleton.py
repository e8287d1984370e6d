"""End to end over real HTTP and websockets: submit, run, watch."""

from __future__ import annotations

import time
from datetime import datetime

import pytest
import sqlalchemy as sa
from gql.transport.exceptions import TransportQueryError
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.stack import Stack
from tests.support.tasks import WATCH, finish, submit

SUBMIT_ECHO = """
mutation($message: String!) {
  submitTask(task: {echo: {message: $message}}) { id status createdAt }
}
"""


async def test_echo_runs_and_stream_shows_queued_running_succeeded(stack: Stack) -> None:
    submitted = (await stack.execute(SUBMIT_ECHO, message="hi"))["submitTask"]
    assert submitted["status"] == "QUEUED"
    events = [e["taskUpdates"] for e in await stack.subscribe(WATCH, id=submitted["id"])]
    assert [(e["__typename"], e["status"]) for e in events] == [
        ("StatusChanged", "QUEUED"),
        ("StatusChanged", "RUNNING"),
        ("StatusChanged", "SUCCEEDED"),
    ]
    cursors = [e["cursor"] for e in events]
    assert cursors == sorted(cursors) and len(set(cursors)) == 3
    assert [int(c) for c in cursors] == sorted(int(c) for c in cursors)
    assert events[-1]["result"] == {"message": "hi"}
    task = (
        await stack.execute(
            "query($id: ID!) { task(id: $id) { status result createdAt startedAt finishedAt } }",
            id=submitted["id"],
        )
    )["task"]
    assert task["status"] == "SUCCEEDED"
    assert task["result"] == {"message": "hi"}
    created, started, finished = (
        datetime.fromisoformat(task[k]) for k in ("createdAt", "startedAt", "finishedAt")
    )
    assert created <= started <= finished


async def test_resubscribing_with_last_cursor_gets_exactly_the_rest(stack: Stack) -> None:
    submitted = (
        await stack.execute(
            "mutation { submitTask(task: {sleep: {seconds: 1.5}}) { id } }",
        )
    )["submitTask"]
    first = await stack.subscribe(WATCH, id=submitted["id"], limit=1)
    cursor = first[0]["taskUpdates"]["cursor"]
    rest = [
        e["taskUpdates"] for e in await stack.subscribe(WATCH, id=submitted["id"], after=cursor)
    ]
    everything = [e["taskUpdates"] for e in await stack.subscribe(WATCH, id=submitted["id"])]
    assert [first[0]["taskUpdates"], *rest] == everything
    kinds = [e["__typename"] for e in everything]
    assert kinds[0] == "StatusChanged" and kinds[-1] == "StatusChanged"
    assert "ProgressReported" in kinds
    assert everything[-1]["status"] == "SUCCEEDED"
    cursors = [e["cursor"] for e in everything]
    assert len(set(cursors)) == len(cursors) and cursors == sorted(cursors)


async def test_running_sleep_cancelled_ends_cancelled_within_2s_after_cleanup(
    stack: Stack,
) -> None:
    task_id = (await stack.execute("mutation { submitTask(task: {sleep: {seconds: 30}}) { id } }"))[
        "submitTask"
    ]["id"]
    seen = await stack.subscribe(WATCH, id=task_id, limit=2)  # QUEUED, RUNNING
    assert seen[-1]["taskUpdates"]["status"] == "RUNNING"
    started = time.monotonic()
    cancelled = (
        await stack.execute(
            "mutation($id: ID!) { cancelTask(id: $id) { status cancelRequested } }", id=task_id
        )
    )["cancelTask"]
    assert cancelled["cancelRequested"] is True
    events = [
        e["taskUpdates"]
        for e in await stack.subscribe(WATCH, id=task_id, after=seen[-1]["taskUpdates"]["cursor"])
    ]
    elapsed = time.monotonic() - started
    assert events[-1]["status"] == "CANCELLED"
    assert elapsed < 2.0, f"cancellation took {elapsed:.2f}s"
    lines = [e["line"] for e in events if e["__typename"] == "LogAppended"]
    assert any("cleaned up" in line for line in lines), lines


async def test_queued_deferred_task_cancelled_never_runs(stack: Stack) -> None:
    task_id = (
        await stack.execute(
            'mutation { submitTask(task: {echo: {message: "later"}}, '
            "options: {delaySeconds: 1}) { id status } }"
        )
    )["submitTask"]["id"]
    cancelled = (
        await stack.execute("mutation($id: ID!) { cancelTask(id: $id) { status } }", id=task_id)
    )["cancelTask"]
    assert cancelled["status"] == "CANCELLED"
    # a task due just after it has run: the worker is past the time it would have started
    after = await submit(stack, {"echo": {"message": "after"}}, delaySeconds=1)
    assert (await finish(stack, after))[-1]["status"] == "SUCCEEDED"
    task = (
        await stack.execute(
            "query($id: ID!) { task(id: $id) { status startedAt attempts "
            "events { ... on StatusChanged { status } } } }",
            id=task_id,
        )
    )["task"]
    assert task["status"] == "CANCELLED"
    assert task["startedAt"] is None and task["attempts"] == 0
    assert [e["status"] for e in task["events"]] == ["QUEUED", "CANCELLED"]


async def test_cancelling_a_finished_task_is_a_conflict(stack: Stack) -> None:
    task_id = (await stack.execute(SUBMIT_ECHO, message="done"))["submitTask"]["id"]
    await stack.subscribe(WATCH, id=task_id)
    with pytest.raises(TransportQueryError) as err:
        await stack.execute("mutation($id: ID!) { cancelTask(id: $id) { status } }", id=task_id)
    assert err.value.errors is not None
    assert err.value.errors[0]["extensions"]["code"] == "CONFLICT"
    assert "SUCCEEDED" in err.value.errors[0]["message"]


async def test_cancelling_an_unknown_task_is_not_found(api: Stack) -> None:
    with pytest.raises(TransportQueryError) as err:
        await api.execute(
            'mutation { cancelTask(id: "00000000-0000-0000-0000-000000000000") { status } }'
        )
    assert err.value.errors is not None
    assert err.value.errors[0]["extensions"]["code"] == "NOT_FOUND"
    unknown = await api.execute('{ task(id: "00000000-0000-0000-0000-000000000000") { id } }')
    assert unknown == {"task": None}


BAD_INPUTS = [
    ("unknown task type", '{ bogus: { message: "x" } }', "bogus"),
    ("two members", '{ echo: { message: "x" }, sum: { numbers: [1] } }', "TaskSpecInput"),
    ("negative seconds", "{ sleep: { seconds: -1 } }", "task.sleep.seconds"),
    ("empty numbers", "{ sum: { numbers: [] } }", "task.sum.numbers"),
]


@pytest.mark.parametrize(("case", "spec", "named"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
async def test_bad_input_is_refused_with_bad_input_naming_the_field_and_writes_nothing(
    api: Stack, engine: AsyncEngine, case: str, spec: str, named: str
) -> None:
    with pytest.raises(TransportQueryError) as err:
        await api.execute(f"mutation {{ submitTask(task: {spec}) {{ id }} }}")
    assert err.value.errors is not None
    error = err.value.errors[0]
    assert error["extensions"]["code"] == "BAD_INPUT", error
    assert named in error["message"], error
    async with engine.connect() as conn:
        assert await conn.scalar(sa.text("SELECT count(*) FROM task")) == 0
        assert await conn.scalar(sa.text("SELECT count(*) FROM task_event")) == 0


async def test_bad_input_through_variables_is_bad_input_too(api: Stack) -> None:
    with pytest.raises(TransportQueryError) as err:
        await api.execute(
            "mutation($t: TaskSpecInput!) { submitTask(task: $t) { id } }",
            t={"echo": {"message": "a"}, "sum": {"numbers": [1]}},
        )
    assert err.value.errors is not None
    assert err.value.errors[0]["extensions"]["code"] == "BAD_INPUT"


async def test_tasks_paged_two_at_a_time_returns_each_once_in_stable_order(api: Stack) -> None:
    ids = [(await api.execute(SUBMIT_ECHO, message=str(i)))["submitTask"]["id"] for i in range(5)]
    page_query = """
    query($after: String) {
      tasks(first: 2, after: $after) {
        edges { cursor node { id } }
        pageInfo { hasNextPage endCursor }
      }
    }"""
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        page = (await api.execute(page_query, after=after))["tasks"]
        pages += 1
        seen += [e["node"]["id"] for e in page["edges"]]
        if pages == 1:  # a task arriving mid-way must not shift the pages
            await api.execute(SUBMIT_ECHO, message="late")
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert pages == 3
    assert seen == list(reversed(ids))  # newest first, each exactly once


async def test_following_an_unknown_task_is_not_found(api: Stack) -> None:
    with pytest.raises(TransportQueryError) as err:
        await api.subscribe(WATCH, id="00000000-0000-0000-0000-000000000000")
    assert err.value.errors is not None
    assert err.value.errors[0]["extensions"]["code"] == "NOT_FOUND"


async def test_cancel_while_the_attempt_is_starting_still_cancels_it(stack: Stack) -> None:
    """cancelTask racing the worker's QUEUED -> RUNNING: whichever wins, it ends CANCELLED
    and quickly (the worker remembers a request for a body that has not started yet)."""
    for _ in range(5):
        task_id = (
            await stack.execute("mutation { submitTask(task: {sleep: {seconds: 20}}) { id } }")
        )["submitTask"]["id"]
        await stack.execute("mutation($id: ID!) { cancelTask(id: $id) { status } }", id=task_id)
        events = await stack.subscribe(WATCH, id=task_id, within=2.5)
        assert events[-1]["taskUpdates"]["status"] == "CANCELLED"
