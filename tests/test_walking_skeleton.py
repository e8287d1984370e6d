"""End to end over real HTTP and websockets: submit, run, watch."""

from __future__ import annotations

from datetime import datetime

from tests.conftest import Stack

SUBMIT_ECHO = """
mutation($message: String!) {
  submitTask(task: {echo: {message: $message}}) { id status createdAt }
}
"""
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
