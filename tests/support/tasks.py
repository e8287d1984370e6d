"""Task operations as a client does them, over GraphQL on a running api: submit, read,
follow to the end."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.stack import Stack
from tests.support.waiting import eventually

SUBMIT = """
mutation($task: TaskSpecInput!, $options: TaskOptionsInput) {
  submitTask(task: $task, options: $options) { id }
}"""
BATCH = "mutation($t: [TaskSubmissionInput!]!) { submitTasks(tasks: $t) { id } }"
TASK = """
query($id: ID!) {
  task(id: $id) {
    id status attempts maxRetries priority createdAt startedAt finishedAt
    error { code message } result workerId nextAttemptAt queuePosition
  }
}"""
WATCH = """
subscription($id: ID!, $after: String) {
  taskUpdates(id: $id, after: $after) {
    __typename cursor taskId at
    ... on StatusChanged { status result error { code message } }
    ... on ProgressReported { progress message }
    ... on LogAppended { level line }
  }
}
"""
EVENTS = """
query($id: ID!, $after: String) {
  task(id: $id) { progress events(after: $after) { __typename cursor ... on LogAppended { line } } }
}"""


async def submit(stack: Stack, task: dict[str, Any], **options: Any) -> str:
    """submitTask of `task` ({type: input}) with `options` (TaskOptionsInput); its id."""
    result = await stack.execute(SUBMIT, task=task, options=options or None)
    return str(result["submitTask"]["id"])


async def task_of(stack: Stack, task_id: str) -> dict[str, Any]:
    """The task's fields of TASK."""
    return dict((await stack.execute(TASK, id=task_id))["task"])


async def finish(stack: Stack, task_id: str, within: float = 30) -> list[dict[str, Any]]:
    """Follow the task until its stream completes; every event of it (WATCH's fields)."""
    return [e["taskUpdates"] for e in await stack.subscribe(WATCH, id=task_id, within=within)]


async def ended(stack: Stack, query: str, task_id: str, within: float = 20) -> dict[str, Any]:
    """`query`'s task (its `task(id:)` field) once it is SUCCEEDED, FAILED or CANCELLED."""
    found: dict[str, Any] = {}

    async def done() -> bool:
        """the task ended"""
        found.update((await stack.execute(query, id=task_id))["task"])
        return found["status"] in ("SUCCEEDED", "FAILED", "CANCELLED")

    await eventually(done, within=within)
    return found


async def task_log(stack: Stack, task_id: str) -> str:
    """The task's log, as its `logsUrl` serves it."""
    task = await stack.execute("query($id: ID!) { task(id: $id) { logsUrl } }", id=task_id)
    url = task["task"]["logsUrl"]
    assert url is not None, "the task has not started: no log yet"
    async with httpx.AsyncClient() as client:
        answer = await client.get(url)
    assert answer.status_code == 200, answer.text
    return answer.text
