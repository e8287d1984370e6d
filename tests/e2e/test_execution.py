"""Execution guarantees with real servers (issue 20): failures that never retry, deadlines
(a task that waited past its deadline never runs, whether the worker was stopped or the task
waited for a retry), and subtasks (ctx.submit, ctx.wait, the cancel cascade and `detached`)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from taskrunner.config import Settings
from tests.support.environment import task_package
from tests.support.processes import api_process, worker_process
from tests.support.servers import run_worker
from tests.support.stack import Stack
from tests.support.tasks import ended as task_ended
from tests.support.tasks import submit, task_of
from tests.support.waiting import eventually

TASK = """
query($id: ID!) {
  task(id: $id) {
    id status attempts startedAt deadline parentId detached result error { code message }
    children { id parentId status detached labels }
  }
}"""
CANCEL = "mutation($id: ID!) { cancelTask(id: $id) { status } }"


async def ended(stack: Stack, task_id: str, within: float = 20) -> dict[str, Any]:
    return await task_ended(stack, TASK, task_id, within)


# --- failures that never retry -----------------------------------------------------------


async def test_a_non_retryable_failure_makes_one_attempt_whatever_max_retries_says(
    stack: Stack,
) -> None:
    for_good = await submit(stack, {"fail": {"failTimes": 5, "retryable": False}}, maxRetries=5)
    transient = await submit(stack, {"fail": {"failTimes": 1}}, maxRetries=5)  # the contrast
    final = await ended(stack, for_good)
    assert (final["status"], final["attempts"]) == ("FAILED", 1), final
    assert final["error"]["code"] == "TASK_ERROR"
    assert final["error"]["message"] == "failed on purpose (attempt 1)"
    again = await ended(stack, transient)
    assert (again["status"], again["attempts"]) == ("SUCCEEDED", 2), again


async def test_a_refused_fetch_is_not_retried(stack: Stack) -> None:
    task_id = await submit(stack, {"webScrape": {"url": "http://127.0.0.1:9/"}}, maxRetries=3)
    final = await ended(stack, task_id)
    assert (final["status"], final["attempts"]) == ("FAILED", 1), final
    assert final["error"]["code"] == "FETCH_REFUSED"


# --- deadlines -----------------------------------------------------------------------------


def soon(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


async def test_a_deadline_that_passes_while_no_worker_runs_fails_the_task_unrun(
    api: Stack, settings: Settings
) -> None:
    late = await submit(api, {"echo": {"message": "late"}}, deadline=soon(1.0))
    timely = await submit(api, {"echo": {"message": "timely"}}, deadline=soon(3600))
    plain = await submit(api, {"echo": {"message": "plain"}})
    await asyncio.sleep(1.5)  # the deadline passes while no worker runs
    async with run_worker(settings):
        found = await ended(api, late)
        assert (found["status"], found["error"]["code"]) == ("FAILED", "DEADLINE_EXCEEDED")
        assert (found["attempts"], found["startedAt"]) == (0, None)  # never ran
        for task_id in (timely, plain):
            assert (await ended(api, task_id))["status"] == "SUCCEEDED"


async def test_a_retry_waiting_for_its_backoff_fails_at_the_deadline(stack: Stack) -> None:
    # fail's backoff: 0.5 s, then 1 s ...: its third attempt would come after the deadline
    task_id = await submit(stack, {"fail": {"failTimes": 10}}, maxRetries=10, deadline=soon(1.2))
    final = await ended(stack, task_id)
    assert (final["status"], final["error"]["code"]) == ("FAILED", "DEADLINE_EXCEEDED"), final
    assert 1 <= final["attempts"] <= 2


@pytest.mark.parametrize(
    ("options", "field", "says"),
    [
        ({"deadline": "2030-01-01T00:00:00"}, "options.deadline", "time zone"),
        (
            {"deadline": "2030-01-01T00:00:00Z", "runAt": "2030-01-02T00:00:00Z"},
            "options.deadline",
            "after runAt",
        ),
        ({"deadline": soon(5), "delaySeconds": 60}, "options.deadline", "delaySeconds"),
        ({"rateLimit": "lots"}, "options.rateLimit", "N/second"),
    ],
)
async def test_bad_deadlines_and_rates_are_refused_naming_the_field(
    api: Stack, options: dict[str, Any], field: str, says: str
) -> None:
    from gql.transport.exceptions import TransportQueryError

    with pytest.raises(TransportQueryError) as raised:
        await submit(api, {"echo": {"message": "x"}}, **options)
    (error,) = raised.value.errors or []
    assert error["extensions"]["code"] == "BAD_INPUT"
    assert error["extensions"]["field"] == field
    assert says in error["message"]


# --- subtasks ------------------------------------------------------------------------------

SPAWN = '''
"""Submit children, and wait for them."""

from pydantic import BaseModel

NAME = "spawn"


class Input(BaseModel):
    count: int
    sleep: float = 0  # children sleep this long (0: they echo)
    detached: list[int] = []  # the indexes of children submitted detached
    bad_last: bool = False  # the last child's spec is not valid
    wait: bool = True


def spec(input: Input, i: int) -> dict:
    if input.bad_last and i == input.count - 1:
        return {"echo": {"mesage": "typo"}}
    return {"sleep": {"seconds": input.sleep}} if input.sleep else {"echo": {"message": f"m{i}"}}


async def run(ctx, input: Input) -> dict:
    ids = [
        await ctx.submit(spec(input, i), {"labels": ["child"]}, detached=i in input.detached)
        for i in range(input.count)
    ]
    if not input.wait:
        return {"children": [str(i) for i in ids]}
    done = await ctx.wait(ids)
    return {"children": [[d.status.value, d.result, d.error_code] for d in done]}
'''


@pytest.fixture
async def spawning(settings: Settings, tmp_path: Path) -> Any:
    """An api and a worker that know the `spawn` type."""
    extra = task_package(tmp_path, "my_spawn", {"spawn": SPAWN})
    async with (
        worker_process(settings, tmp_path / "worker.log", **extra),
        api_process(settings, tmp_path / "api.log", **extra) as url,
    ):
        yield await Stack.keyed(url, settings)


async def test_a_task_submits_children_and_waits_for_their_results(spawning: Stack) -> None:
    parent = await submit(spawning, {"spawn": {"count": 3}})
    final = await ended(spawning, parent)
    assert final["status"] == "SUCCEEDED", final
    assert [c[0] for c in final["result"]["children"]] == ["SUCCEEDED"] * 3
    assert [c[1]["message"] for c in final["result"]["children"]] == ["m0", "m1", "m2"]
    listed = final["children"]
    assert [c["parentId"] for c in listed] == [parent] * 3  # same owner: this key sees them
    assert all(c["labels"] == ["child"] and not c["detached"] for c in listed)
    child = await task_of(spawning, listed[0]["id"])
    assert child["status"] == "SUCCEEDED"


async def test_cancelling_a_parent_cancels_its_children_but_not_a_detached_one(
    spawning: Stack,
) -> None:
    parent = await submit(spawning, {"spawn": {"count": 3, "sleep": 30, "detached": [2]}})
    listed: list[dict[str, Any]] = []

    async def all_running() -> bool:
        """the parent waits and its three children run"""
        found = (await spawning.execute(TASK, id=parent))["task"]
        listed[:] = found["children"]
        return len(listed) == 3 and all(c["status"] == "RUNNING" for c in listed)

    await eventually(all_running, within=15)
    await spawning.execute(CANCEL, id=parent)
    assert (await ended(spawning, parent, within=10))["status"] == "CANCELLED"
    for child in listed[:2]:
        assert (await ended(spawning, child["id"], within=10))["status"] == "CANCELLED"
    detached = await task_of(spawning, listed[2]["id"])
    assert detached["status"] == "RUNNING"  # it runs on
    await spawning.execute(CANCEL, id=listed[2]["id"])


async def test_a_bad_child_spec_fails_the_parent_with_bad_input_and_creates_nothing(
    spawning: Stack,
) -> None:
    parent = await submit(spawning, {"spawn": {"count": 2, "badLast": True}})
    final = await ended(spawning, parent)
    assert (final["status"], final["error"]["code"]) == ("FAILED", "BAD_INPUT"), final
    assert "spec.echo.message" in final["error"]["message"]
    assert len(final["children"]) == 1  # the first one, submitted before the bad one
