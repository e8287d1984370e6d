"""`ctx.parent_results` as task code sees it: a task type of the user's (its module in a
package of theirs, TASKRUNNER_TASK_MODULES) returns what it was handed, run by a real
worker in a workflow, on a step's first attempt and on its retry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from taskrunner.config import Settings
from tests.support.environment import task_package
from tests.support.processes import api_process, worker_process
from tests.support.stack import Stack
from tests.support.waiting import eventually

PARENTS_TASK = '''
"""Return the parents' results this step was handed."""

from pydantic import BaseModel

from taskrunner.retries import RetryPolicy

NAME = "parents"
RETRY = RetryPolicy(max_retries=1, backoff_seconds=0.05)


class Input(BaseModel):
    fail_first: bool = False


async def run(ctx, input: Input) -> dict:
    if input.fail_first and ctx.attempt == 1:
        raise RuntimeError("the first attempt fails")
    return {"parents": ctx.parent_results, "attempt": ctx.attempt}
'''

SUBMIT = "mutation($w: WorkflowInput!) { submitWorkflow(workflow: $w) { id } }"
WORKFLOW = """
query($id: ID!) {
  workflow(id: $id) { status steps { key task { status attempts result } } }
}"""


def step(key: str, task: dict[str, Any], *parents: str) -> dict[str, Any]:
    return {"key": key, "task": task, "dependsOn": list(parents)}


async def test_a_step_reads_its_parents_results_on_its_first_attempt_and_on_a_retry(
    settings: Settings, tmp_path: Path
) -> None:
    extra = task_package(tmp_path, "my_steps", {"parents": PARENTS_TASK})
    workflow = {
        "steps": [
            step("a", {"sum": {"numbers": [1, 2]}}),
            step("b", {"echo": {"message": "from b"}}),
            step("root", {"parents": {}}),
            step("one", {"parents": {}}, "a"),
            step("two", {"parents": {"failFirst": True}}, "a", "b"),
        ]
    }
    async with (
        worker_process(settings, tmp_path / "worker.log", **extra),
        api_process(settings, tmp_path / "api.log", **extra) as url,
    ):
        stack = await Stack.keyed(url, settings)
        workflow_id = (await stack.execute(SUBMIT, w=workflow))["submitWorkflow"]["id"]
        found: dict[str, Any] = {}

        async def ended() -> bool:
            """the workflow ended"""
            found.update((await stack.execute(WORKFLOW, id=workflow_id))["workflow"])
            return bool(found["status"] != "RUNNING")

        await eventually(ended, within=30)
    steps = {s["key"]: s["task"] for s in found["steps"]}
    assert found["status"] == "SUCCEEDED", steps
    a, b = steps["a"]["result"], steps["b"]["result"]
    assert a == {"sum": 3} and b, steps
    assert steps["root"]["result"] == {"parents": {}, "attempt": 1}
    assert steps["one"]["result"] == {"parents": {"a": a}, "attempt": 1}
    assert steps["two"]["attempts"] == 2
    assert steps["two"]["result"] == {"parents": {"a": a, "b": b}, "attempt": 2}
