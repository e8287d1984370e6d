"""Every task that started has a log (`Task.logsUrl`), read from its events when asked
for: the runner's own lines for each attempt (started on which worker, succeeded in X ms,
failed with CODE and its message, retry in S s, cancelled, retried) among the task's own
lines, so far while it runs; a long one streams whole, in order. The link is signed, and a
key sent along must be the task owner's."""

from __future__ import annotations

import re
from typing import Any

import httpx

from tests.support.stack import Stack, make_key
from tests.support.tasks import ended as task_ended
from tests.support.tasks import submit
from tests.support.waiting import eventually

TASK = "query($id: ID!) { task(id: $id) { status attempts logsUrl } }"
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+\+00:00"


async def ended(stack: Stack, task_id: str) -> dict[str, Any]:
    return await task_ended(stack, TASK, task_id, within=30)


async def read_log(url: str, **headers: str) -> str:
    async with httpx.AsyncClient() as client:
        answer = await client.get(url, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "text/plain; charset=utf-8"
    return answer.text


def texts(log: str) -> list[str]:
    """The lines without their time stamps, each `LEVEL text`."""
    found = []
    for line in log.splitlines():
        match = re.match(rf"{STAMP} (\w+) +(.*)$", line)
        if match:
            found.append(f"{match[1]} {match[2]}")
    return found


async def test_a_no_op_task_has_the_runner_lines(stack: Stack) -> None:
    task = await ended(stack, await submit(stack, {"echo": {"message": "hi"}}))
    lines = texts(await read_log(task["logsUrl"]))
    assert lines[0] == "INFO queued"
    assert re.fullmatch(r"INFO attempt 1 started on worker \S+:\d+:\w+", lines[1]), lines
    assert re.fullmatch(r"INFO attempt 1 succeeded in [\d.]+ ms", lines[2]), lines
    assert len(lines) == 3, lines


async def test_failures_retries_and_their_tracebacks_are_in_order(stack: Stack) -> None:
    task_id = await submit(stack, {"fail": {"failTimes": 1}}, maxRetries=1)
    task = await ended(stack, task_id)
    assert (task["status"], task["attempts"]) == ("SUCCEEDED", 2)
    log = await read_log(task["logsUrl"])
    lines = texts(log)
    assert lines[1].startswith("INFO attempt 1 started on worker ")
    assert lines[2].startswith("ERROR Traceback (most recent call last):")
    assert re.fullmatch(
        r"WARNING attempt 1 failed with TASK_ERROR: TaskFailedOnPurpose: failed on purpose "
        r"\(attempt 1\); retry 1 of 1 in [\d.]+ s",
        lines[3],
    ), lines
    assert lines[4].startswith("INFO attempt 2 started on worker ")
    assert lines[5].startswith("INFO attempt 2 succeeded in ")

    retry = "mutation($id: ID!) { retryTask(id: $id) { id } }"
    failed_id = await submit(stack, {"fail": {"retryable": False}})
    assert (await ended(stack, failed_id))["status"] == "FAILED"
    await stack.execute(retry, id=failed_id)
    again = await ended(stack, failed_id)
    lines = texts(await read_log(again["logsUrl"]))
    failure = r"ERROR attempt 1 failed after [\d.]+ ms with TASK_ERROR: .+"
    assert any(re.fullmatch(failure, x) for x in lines), lines
    assert "INFO retried: queued again" in lines
    assert lines[-1].startswith("INFO attempt 2 succeeded in "), lines  # failTimes: 1


async def test_a_running_task_serves_its_log_so_far_and_a_cancel_ends_it(stack: Stack) -> None:
    task_id = await submit(
        stack, {"chatter": {"progressSteps": 0, "logLines": 600, "intervalSeconds": 0.05}}
    )
    seen: dict[str, str] = {}

    async def some_lines() -> bool:
        """it logged a few lines"""
        task = (await stack.execute(TASK, id=task_id))["task"]
        if task["logsUrl"] is None:
            return False
        seen["log"] = await read_log(task["logsUrl"])
        return "line 3 of 600" in seen["log"]

    await eventually(some_lines, within=20)
    assert "succeeded" not in seen["log"] and "line 600 of 600" not in seen["log"]
    assert re.search(r"INFO +attempt 1 started on worker \S+:\d+:\w+\n", seen["log"])
    await stack.execute("mutation($id: ID!) { cancelTask(id: $id) { id } }", id=task_id)
    task = await ended(stack, task_id)
    lines = texts(await read_log(task["logsUrl"]))
    assert lines[-1] == "WARNING attempt 1 cancelled", lines[-3:]


async def test_a_long_log_streams_whole_and_in_order(stack: Stack) -> None:
    task = await ended(
        stack, await submit(stack, {"chatter": {"progressSteps": 0, "logLines": 2500}})
    )
    lines = texts(await read_log(task["logsUrl"]))
    assert [x for x in lines if "line " in x] == [f"INFO line {i} of 2500" for i in range(1, 2501)]
    assert len(lines) == 2503  # queued, started, 2,500 lines, succeeded


async def test_the_link_is_signed_and_a_key_sent_along_must_be_the_owners(stack: Stack) -> None:
    waiting = await submit(stack, {"echo": {"message": "later"}}, delaySeconds=3600)
    assert (await stack.execute(TASK, id=waiting))["task"]["logsUrl"] is None  # not started
    task = await ended(stack, await submit(stack, {"echo": {"message": "mine"}}))
    url = task["logsUrl"]
    other = await make_key(stack.settings, "someone-else")
    async with httpx.AsyncClient() as client:
        tampered = await client.get(url.replace("signature=", "signature=0"))
        assert tampered.status_code == 403
        assert (
            await client.get(url, headers={"Authorization": f"Bearer {other}"})
        ).status_code == 404
        mine = await client.get(url, headers={"Authorization": f"Bearer {stack.key}"})
        assert mine.status_code == 200 and "attempt 1 succeeded" in mine.text
