"""Workflows with real servers (issue 19): a diamond of `sum` steps with result passing,
a 100-step fan-out into one fan-in, the failure policies, cancelWorkflow, retryWorkflow,
bad input (nothing written), and workflowUpdates resumed after a disconnect."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.stack import Stack
from tests.support.waiting import eventually

SUBMIT = """
mutation($w: WorkflowInput!) {
  submitWorkflow(workflow: $w) {
    id status stepCount
    steps { key dependsOn task { id status queuePosition waitingForParents
                                 waitingOn { id } workflowId stepKey } }
  }
}"""
WORKFLOW = """
query($id: ID!) {
  workflow(id: $id) {
    id status finishedAt
    steps { key dependsOn task { id status input result startedAt finishedAt
                                 error { code message } } }
  }
}"""
UPDATES = """
subscription($id: ID!, $after: String) {
  workflowUpdates(id: $id, after: $after) {
    __typename cursor taskId
    ... on StatusChanged { status }
    ... on StepReady { stepKey }
    ... on WorkflowStatusChanged { workflowId workflowStatus }
  }
}"""


def sum_step(key: str, numbers: list[float], parents: tuple[str, ...] = ()) -> dict[str, Any]:
    """A `sum` step adding `numbers` and the `sum` of each parent's result."""
    return {
        "key": key,
        "task": {"sum": {"numbers": numbers}},
        "dependsOn": list(parents),
        "bind": [{"field": "numbers[]", "step": p, "path": "sum"} for p in parents],
    }


DIAMOND = {
    "name": "diamond",
    "steps": [
        sum_step("a", [1, 2]),
        sum_step("b", [10], ("a",)),
        sum_step("c", [100], ("a",)),
        sum_step("d", [], ("b", "c")),
    ],
}


async def workflow_of(stack: Stack, workflow_id: str) -> dict[str, Any]:
    return dict((await stack.execute(WORKFLOW, id=workflow_id))["workflow"])


async def ended(stack: Stack, workflow_id: str, within: float = 20) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def done() -> bool:
        """the workflow ended"""
        found.update(await workflow_of(stack, workflow_id))
        return found["status"] != "RUNNING"

    await eventually(done, within=within)
    return found


async def test_a_diamond_passes_results_and_starts_d_after_b_and_c(stack: Stack) -> None:
    submitted = (await stack.execute(SUBMIT, w=DIAMOND))["submitWorkflow"]
    assert submitted["status"] == "RUNNING" and submitted["stepCount"] == 4
    steps = {s["key"]: s for s in submitted["steps"]}
    assert steps["d"]["dependsOn"] == ["b", "c"]
    waiting = steps["d"]["task"]
    assert waiting["status"] == "QUEUED" and waiting["queuePosition"] is None
    assert waiting["waitingForParents"] is True
    assert {t["id"] for t in waiting["waitingOn"]} == {
        steps["b"]["task"]["id"],
        steps["c"]["task"]["id"],
    }
    assert waiting["workflowId"] == submitted["id"] and waiting["stepKey"] == "d"

    done = await ended(stack, submitted["id"])
    assert done["status"] == "SUCCEEDED" and done["finishedAt"]
    by_key = {s["key"]: s["task"] for s in done["steps"]}
    assert by_key["a"]["result"] == {"sum": 3}
    assert by_key["b"]["result"] == {"sum": 13}
    assert by_key["c"]["result"] == {"sum": 103}
    assert by_key["d"]["input"] == {"numbers": [13, 103]}
    assert by_key["d"]["result"] == {"sum": 116}
    assert by_key["d"]["startedAt"] > max(by_key["b"]["finishedAt"], by_key["c"]["finishedAt"])

    events = await stack.subscribe(UPDATES, id=submitted["id"])
    kinds = [
        (e["workflowUpdates"]["__typename"], e["workflowUpdates"].get("status")) for e in events
    ]
    assert kinds[-1][0] == "WorkflowStatusChanged"
    assert events[-1]["workflowUpdates"]["workflowStatus"] == "SUCCEEDED"
    assert sum(1 for k in kinds if k == ("StatusChanged", "SUCCEEDED")) == 4
    assert sum(1 for k, _ in kinds if k == "StepReady") == 3
