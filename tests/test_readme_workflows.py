"""The README's "Workflows" examples, run as written, in order, against a real api and
worker, as a reader does in GraphiQL: the diamond submitted, followed with
`workflowUpdates` until the subscription completes, then read back with `workflow`.

Every ```graphql block of the section runs verbatim; a ```json block right under one is
its variables, whose placeholder this test replaces with the id the submission returned.
The results are checked against what the prose says they are (the steps' results, `d`'s
bound input, the order of the events). `test_the_section_has_the_examples_this_test_runs`
fails first when an example is added, removed or reordered."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from graphql import FieldNode, OperationDefinitionNode, parse

from tests.support.environment import repo_root
from tests.support.stack import Stack

TITLE = "## Workflows"
SECTION = (repo_root() / "README.md").read_text().split(TITLE, 1)[1].split("\n## ", 1)[0]
BLOCK = re.compile(r"^```(graphql|json)\n(.*?)^```", re.MULTILINE | re.DOTALL)
PLACEHOLDER = "PASTE-THE-WORKFLOW-ID"

EXPECTED = [
    ("mutation", ["submitWorkflow"]),  # the diamond
    ("subscription", ["workflowUpdates"]),  # followed to its end
    ("query", ["workflow"]),  # what each step got and returned
]

# What the prose says each step returned, and the input `d` ran with once bound.
RESULTS = {"a": {"sum": 3}, "b": {"sum": 13}, "c": {"sum": 103}, "d": {"sum": 1116}}
D_INPUT = {"numbers": [1000, 13, 103]}


@dataclass(frozen=True)
class Example:
    document: str
    variables: dict[str, Any] | None

    @property
    def shape(self) -> tuple[str, list[str]]:
        (op,) = parse(self.document).definitions
        assert isinstance(op, OperationDefinitionNode)
        roots = [s.name.value for s in op.selection_set.selections if isinstance(s, FieldNode)]
        return op.operation.value, roots

    @property
    def declared(self) -> set[str]:
        (op,) = parse(self.document).definitions
        assert isinstance(op, OperationDefinitionNode)
        return {v.variable.name.value for v in op.variable_definitions or ()}

    def filled(self, workflow_id: str) -> dict[str, Any]:
        """The variables, the placeholder replaced by the workflow's id."""
        out = {}
        for name, value in (self.variables or {}).items():
            assert value == PLACEHOLDER, f"${name}: {value!r} is not {PLACEHOLDER}"
            out[name] = workflow_id
        return out


def examples() -> list[Example]:
    found: list[Example] = []
    for match in BLOCK.finditer(SECTION):
        language, body = match.groups()
        if language == "graphql":
            found.append(Example(body, None))
        else:
            assert found and found[-1].variables is None, body
            found[-1] = Example(found[-1].document, json.loads(body))
    return found


def test_the_section_has_the_examples_this_test_runs() -> None:
    found = examples()
    assert [e.shape for e in found] == EXPECTED
    for example in found:
        assert set(example.variables or {}) == example.declared, example.document
    # the prose states the results this test checks
    for value in (*RESULTS.values(), D_INPUT):
        assert f"`{json.dumps(value)}`" in SECTION, value


async def test_the_examples_run_as_written_in_order(stack: Stack) -> None:
    """The diamond: `a` queued, the others waiting for their parents; the subscription
    shows the steps made ready in the order the DAG allows and ends with the workflow's
    SUCCEEDED; `d` ran with its literal item and the two appended sums."""
    submit, updates, read = examples()

    submitted = (await stack.execute(submit.document))["submitWorkflow"]
    assert (submitted["status"], submitted["stepCount"]) == ("RUNNING", 4)
    steps = {s["key"]: s for s in submitted["steps"]}
    assert [s["key"] for s in submitted["steps"]] == ["a", "b", "c", "d"]
    assert steps["d"]["dependsOn"] == ["b", "c"]
    statuses = {k: s["task"]["status"] for k, s in steps.items()}
    # `a` is ready at once: the worker may have started it before the answer was read
    assert statuses.pop("a") in ("QUEUED", "RUNNING"), statuses
    assert statuses == dict.fromkeys("bcd", "QUEUED")
    assert {k: s["task"]["waitingForParents"] for k, s in steps.items()} == {
        "a": False,
        "b": True,
        "c": True,
        "d": True,
    }
    ids = {k: s["task"]["id"] for k, s in steps.items()}
    assert {t["id"] for t in steps["d"]["task"]["waitingOn"]} == {ids["b"], ids["c"]}
    assert steps["b"]["task"]["waitingOn"] == [{"id": ids["a"]}]
    key_of = {task_id: key for key, task_id in ids.items()}

    got = await stack.subscribe(updates.document, within=30, **updates.filled(submitted["id"]))
    events = [g["workflowUpdates"] for g in got]

    def where(typename: str, key: str, status: str | None = None) -> int:
        """The position of the (only) such event of step `key`."""
        found = [
            i
            for i, e in enumerate(events)
            if e["__typename"] == typename
            and key_of[e["taskId"]] == key
            and (status is None or e["status"] == status)
        ]
        assert len(found) == 1, (typename, key, status, events)
        return found[0]

    assert [(e["__typename"], e.get("status")) for e in events[:4]] == [
        ("StatusChanged", "QUEUED")
    ] * 4
    last = events[-1]
    assert last["__typename"] == "WorkflowStatusChanged"
    assert (last["workflowId"], last["workflowStatus"]) == (submitted["id"], "SUCCEEDED")
    assert sum(e["__typename"] == "WorkflowStatusChanged" for e in events) == 1
    assert [key_of[e["taskId"]] for e in events if e["__typename"] == "StepReady"] in (
        ["b", "c", "d"],
        ["c", "b", "d"],
    )
    a_done = where("StatusChanged", "a", "SUCCEEDED")
    for key in ("b", "c"):
        ready = where("StepReady", key)
        assert events[ready]["stepKey"] == key
        assert a_done < ready < where("StatusChanged", key, "RUNNING")
    d_ready = where("StepReady", "d")
    assert max(where("StatusChanged", k, "SUCCEEDED") for k in "bc") < d_ready
    assert (
        d_ready < where("StatusChanged", "d", "RUNNING") < where("StatusChanged", "d", "SUCCEEDED")
    )
    for key, result in RESULTS.items():
        assert events[where("StatusChanged", key, "SUCCEEDED")]["result"] == result
    cursors = [e["cursor"] for e in events]
    assert len(set(cursors)) == len(cursors), "no event twice"

    workflow = (await stack.execute(read.document, **read.filled(submitted["id"])))["workflow"]
    assert (workflow["name"], workflow["status"]) == ("diamond", "SUCCEEDED")
    assert workflow["finishedAt"] is not None
    tasks = {s["key"]: s["task"] for s in workflow["steps"]}
    assert {k: t["result"] for k, t in tasks.items()} == RESULTS
    assert {k: t["status"] for k, t in tasks.items()} == dict.fromkeys("abcd", "SUCCEEDED")
    assert tasks["a"]["input"] == {"numbers": [1, 2]}
    assert tasks["b"]["input"] == {"numbers": [10, 3]}
    assert tasks["c"]["input"] == {"numbers": [100, 3]}
    assert tasks["d"]["input"] == D_INPUT
    assert tasks["d"]["startedAt"] > max(tasks["b"]["finishedAt"], tasks["c"]["finishedAt"])
    assert workflow["finishedAt"] >= tasks["d"]["finishedAt"]
