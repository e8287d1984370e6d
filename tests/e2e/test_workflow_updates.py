"""workflowUpdates across a retry: a workflow that ended FAILED and was run again by
retryWorkflow streams, from its start, through that first end to its last one, and only
then completes; resumed from the first end's cursor, it goes on from there."""

from __future__ import annotations

from typing import Any

from tests.support.stack import Stack
from tests.support.waiting import eventually

SUBMIT = "mutation($w: WorkflowInput!) { submitWorkflow(workflow: $w) { id } }"
RETRY = "mutation($id: ID!) { retryWorkflow(id: $id) { id status } }"
STATUS = "query($id: ID!) { workflow(id: $id) { status steps { key task { attempts } } } }"
UPDATES = """
subscription($id: ID!, $after: String) {
  workflowUpdates(id: $id, after: $after) {
    __typename cursor
    ... on WorkflowStatusChanged { workflowStatus }
  }
}"""
FLOW = {
    "steps": [
        {"key": "a", "task": {"echo": {"message": "a"}}},
        {"key": "b", "task": {"fail": {"failTimes": 1}}, "dependsOn": ["a"]},
        {"key": "c", "task": {"echo": {"message": "c"}}, "dependsOn": ["b"]},
    ]
}


async def status(stack: Stack, workflow_id: str) -> dict[str, Any]:
    return dict((await stack.execute(STATUS, id=workflow_id))["workflow"])


async def ended_as(stack: Stack, workflow_id: str, expected: str) -> None:
    async def done() -> bool:
        """the workflow ended as expected"""
        return (await status(stack, workflow_id))["status"] == expected

    await eventually(done, within=20)


def notes(events: list[dict[str, Any]]) -> list[str]:
    return [
        e["workflowUpdates"]["workflowStatus"]
        for e in events
        if e["workflowUpdates"]["__typename"] == "WorkflowStatusChanged"
    ]


async def test_a_retried_workflow_streams_past_its_first_end_to_its_last(stack: Stack) -> None:
    workflow_id = (await stack.execute(SUBMIT, w=FLOW))["submitWorkflow"]["id"]
    await ended_as(stack, workflow_id, "FAILED")
    first = await stack.subscribe(UPDATES, id=workflow_id, within=10)
    assert notes(first) == ["FAILED"]  # ended: the stream completes at that end

    assert (await stack.execute(RETRY, id=workflow_id))["retryWorkflow"]["status"] == "RUNNING"
    await ended_as(stack, workflow_id, "SUCCEEDED")
    attempts = {
        s["key"]: s["task"]["attempts"] for s in (await status(stack, workflow_id))["steps"]
    }
    assert attempts == {"a": 1, "b": 2, "c": 1}  # a kept its result; c never ran before

    whole = await stack.subscribe(UPDATES, id=workflow_id, within=10)
    assert notes(whole) == ["FAILED", "RUNNING", "SUCCEEDED"]
    assert whole[-1]["workflowUpdates"]["workflowStatus"] == "SUCCEEDED"
    cursors = [e["workflowUpdates"]["cursor"] for e in whole]
    assert len(set(cursors)) == len(cursors)

    failed_at = next(
        i for i, e in enumerate(whole) if e["workflowUpdates"].get("workflowStatus") == "FAILED"
    )
    rest = await stack.subscribe(UPDATES, id=workflow_id, after=cursors[failed_at], within=10)
    assert [e["workflowUpdates"]["cursor"] for e in rest] == cursors[failed_at + 1 :]
