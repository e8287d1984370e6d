"""Workflows with real servers (issue 19): a diamond of `sum` steps with result passing,
a 100-step fan-out into one fan-in on two workers, the failure policies, cancelWorkflow,
retryWorkflow, bad input (nothing written), workflowUpdates resumed after a disconnect and
across a retry, idempotency keys, `workflows` filters and pages, bindings that fail, and
steps on a named queue with a concurrency key."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner.config import Settings
from tests.support.servers import run_api, run_worker
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


STEP = """
query($id: ID!) {
  task(id: $id) {
    id status attempts input result startedAt finishedAt queue concurrencyKey
    error { code message }
    metrics { attempts { workerId } }
    events { __typename ... on StatusChanged { status } }
  }
}"""
WORKERS = """
query($id: ID!) { workflow(id: $id) { steps { task { metrics { attempts { workerId } } } } } }"""
CANCEL = "mutation($id: ID!) { cancelWorkflow(id: $id) { id status } }"
RETRY = "mutation($id: ID!) { retryWorkflow(id: $id) { id status } }"
LIST = """
query($first: Int, $after: String, $status: [WorkflowStatus!], $label: String) {
  workflows(first: $first, after: $after, status: $status, label: $label) {
    edges { cursor node { id status labels } }
    pageInfo { hasNextPage endCursor }
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
        return bool(found["status"] != "RUNNING")

    await eventually(done, within=within)
    return found


def step(
    key: str, task: dict[str, Any], parents: tuple[str, ...] = (), **extra: Any
) -> dict[str, Any]:
    return {"key": key, "task": task, "dependsOn": list(parents), **extra}


def error_of(exc: pytest.ExceptionInfo[Exception]) -> dict[str, Any]:
    """The first GraphQL error of a failed call: message and extensions."""
    (error, *_) = exc.value.errors  # type: ignore[attr-defined]
    return {"message": error["message"], **error.get("extensions", {})}


async def submit(stack: Stack, workflow: dict[str, Any]) -> dict[str, Any]:
    return dict((await stack.execute(SUBMIT, w=workflow))["submitWorkflow"])


async def task_of(stack: Stack, task_id: str) -> dict[str, Any]:
    return dict((await stack.execute(STEP, id=task_id))["task"])


def tasks_by_key(workflow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["key"]: s["task"] for s in workflow["steps"]}


async def row_counts(engine: AsyncEngine) -> tuple[int, int, int]:
    """Rows of workflow, workflow_step and task."""
    async with engine.connect() as conn:
        found = await conn.execute(
            sa.text(
                "SELECT (SELECT count(*) FROM workflow), (SELECT count(*) FROM workflow_step), "
                "(SELECT count(*) FROM task)"
            )
        )
        return tuple(found.one())


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def event_keys(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Each workflowUpdates event as (kind, cursor, task, status or step or workflow's)."""
    return [
        (
            e["__typename"],
            e["cursor"],
            e["taskId"],
            e.get("status") or e.get("stepKey") or e.get("workflowStatus"),
        )
        for e in (item["workflowUpdates"] for item in events)
    ]


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


# --- fan-out and fan-in ---------------------------------------------------------------------


async def test_a_fan_in_of_100_parents_on_two_workers_runs_once_after_all_of_them(
    settings: Settings,
) -> None:
    """100 `sum` steps run on two workers; the fan-in is made ready once, by the last
    parent's success, starts after every parent ended, and adds the 100 results in the
    order of its bindings."""
    parents = tuple(f"p{i}" for i in range(1, 101))
    workflow = {
        "steps": [sum_step(key, [i]) for i, key in enumerate(parents, 1)]
        + [sum_step("total", [], parents)]
    }
    async with run_api(settings) as url, run_worker(settings), run_worker(settings):
        stack = await Stack.keyed(url, settings)

        async def both_serve() -> bool:
            """both workers serve the default queue (their first heartbeats are written)"""
            found = (await stack.execute("{ queues { name workers } }"))["queues"]
            return {"name": "default", "workers": 2} in found

        await eventually(both_serve, within=10)
        submitted = await submit(stack, workflow)
        fan_in = tasks_by_key(submitted)["total"]
        assert fan_in["waitingForParents"] is True and fan_in["queuePosition"] is None
        assert fan_in["status"] == "QUEUED"
        assert {t["id"] for t in fan_in["waitingOn"]} <= {
            t["id"] for key, t in tasks_by_key(submitted).items() if key != "total"
        }
        done = await ended(stack, submitted["id"], within=30)
        by_key = tasks_by_key(done)
        total = await task_of(stack, by_key["total"]["id"])
        ran = (await stack.execute(WORKERS, id=submitted["id"]))["workflow"]["steps"]
        workers = {a["workerId"] for s in ran for a in s["task"]["metrics"]["attempts"]}
        events = await stack.subscribe(UPDATES, id=submitted["id"], within=30)
    assert done["status"] == "SUCCEEDED"
    assert all(by_key[key]["status"] == "SUCCEEDED" for key in parents)
    assert total["status"] == "SUCCEEDED" and total["attempts"] == 1
    assert total["input"] == {"numbers": list(range(1, 101))}
    assert total["result"] == {"sum": 5050}
    running = [e for e in total["events"] if e.get("status") == "RUNNING"]
    assert len(running) == 1, total["events"]
    last_parent_end = max(at(by_key[key]["finishedAt"]) for key in parents)
    assert at(total["startedAt"]) > last_parent_end
    assert len(workers) == 2, f"the parents ran on {workers}"
    kinds = event_keys(events)
    ready = [k for k in kinds if k[0] == "StepReady"]
    assert ready == [("StepReady", ready[0][1], fan_in["id"], "total")]
    assert kinds[-1][0] == "WorkflowStatusChanged" and kinds[-1][3] == "SUCCEEDED"
    assert len(kinds) == len({k[1] for k in kinds}), "an event repeated"


# --- failure policies ---------------------------------------------------------------------


async def test_fail_workflow_cancels_the_steps_not_started_and_lets_running_ones_finish(
    stack: Stack,
) -> None:
    """a -> b (fails); c (sleeps 2 s) runs beside them; d waits for b and c. b's failure
    cancels d at once (WORKFLOW_FAILED), c runs to its end, and only then does the
    workflow end FAILED."""
    submitted = await submit(
        stack,
        {
            "steps": [
                sum_step("a", [1]),
                step("c", {"sleep": {"seconds": 2}}),
                step("b", {"fail": {"message": "b broke"}}, ("a",)),
                step("d", {"echo": {"message": "never"}}, ("b", "c")),
            ]
        },
    )
    ids = {k: t["id"] for k, t in tasks_by_key(submitted).items()}

    async def d_cancelled() -> bool:
        """d is CANCELLED"""
        return bool((await task_of(stack, ids["d"]))["status"] == "CANCELLED")

    await eventually(d_cancelled, within=10)
    meanwhile = await workflow_of(stack, submitted["id"])
    assert meanwhile["status"] == "RUNNING"
    assert tasks_by_key(meanwhile)["c"]["status"] == "RUNNING"
    done = await ended(stack, submitted["id"])
    by_key = {k: await task_of(stack, i) for k, i in ids.items()}
    assert done["status"] == "FAILED"
    assert {k: t["status"] for k, t in by_key.items()} == {
        "a": "SUCCEEDED",
        "b": "FAILED",
        "c": "SUCCEEDED",
        "d": "CANCELLED",
    }
    assert by_key["c"]["result"] == {"slept": 2}
    d = by_key["d"]
    assert d["error"]["code"] == "WORKFLOW_FAILED" and "'b'" in d["error"]["message"], d
    assert d["attempts"] == 0 and d["startedAt"] is None
    assert at(done["finishedAt"]) >= at(by_key["c"]["finishedAt"])


async def test_continue_cancels_only_the_failed_steps_dependents(stack: Stack) -> None:
    """CONTINUE: a -> b (fails) -> d -> f, a -> c -> e. d and f (through d) are CANCELLED
    with DEPENDENCY_FAILED, the c -> e branch runs, and the workflow ends FAILED."""
    submitted = await submit(
        stack,
        {
            "onStepFailure": "CONTINUE",
            "steps": [
                sum_step("a", [1]),
                step("b", {"fail": {}}, ("a",)),
                sum_step("c", [1], ("a",)),
                step("d", {"echo": {"message": "d"}}, ("b",)),
                sum_step("e", [1], ("c",)),
                step("f", {"echo": {"message": "f"}}, ("d",)),
            ],
        },
    )
    done = await ended(stack, submitted["id"])
    by_key = tasks_by_key(done)
    assert done["status"] == "FAILED"
    assert {k: t["status"] for k, t in by_key.items()} == {
        "a": "SUCCEEDED",
        "b": "FAILED",
        "c": "SUCCEEDED",
        "d": "CANCELLED",
        "e": "SUCCEEDED",
        "f": "CANCELLED",
    }
    assert by_key["e"]["result"] == {"sum": 3}
    for key in ("d", "f"):
        error = by_key[key]["error"]
        assert error["code"] == "DEPENDENCY_FAILED" and "'b'" in error["message"], error
        assert by_key[key]["startedAt"] is None
    assert "through the steps between them" in by_key["f"]["error"]["message"]


# --- cancelWorkflow and retryWorkflow ----------------------------------------------------------


async def test_cancel_workflow_interrupts_the_running_step_and_retry_runs_it_all_again(
    stack: Stack,
) -> None:
    """a (sleeps 3 s) RUNNING, b and c waiting: cancelWorkflow interrupts a within a few
    seconds and cancels b and c; the workflow ends CANCELLED and a second cancel is a
    CONFLICT. retryWorkflow runs a (a second attempt), b and c: SUCCEEDED."""
    submitted = await submit(
        stack,
        {
            "steps": [
                step("a", {"sleep": {"seconds": 3}}),
                step("b", {"echo": {"message": "b"}}, ("a",)),
                step("c", {"sum": {"numbers": [1]}}, ("b",)),
            ]
        },
    )
    ids = {k: t["id"] for k, t in tasks_by_key(submitted).items()}

    async def a_running() -> bool:
        """a is RUNNING"""
        return bool((await task_of(stack, ids["a"]))["status"] == "RUNNING")

    await eventually(a_running, within=10)
    with pytest.raises(Exception) as running:
        await stack.execute(RETRY, id=submitted["id"])
    assert error_of(running)["code"] == "CONFLICT"
    asked = time.monotonic()
    await stack.execute(CANCEL, id=submitted["id"])
    done = await ended(stack, submitted["id"], within=5)
    took = time.monotonic() - asked
    assert done["status"] == "CANCELLED" and took < 2.5, f"CANCELLED after {took:.1f}s"
    by_key = tasks_by_key(done)
    assert {k: t["status"] for k, t in by_key.items()} == dict.fromkeys("abc", "CANCELLED")
    assert by_key["b"]["startedAt"] is None and by_key["c"]["startedAt"] is None
    with pytest.raises(Exception) as again:
        await stack.execute(CANCEL, id=submitted["id"])
    assert error_of(again)["code"] == "CONFLICT"

    retried = (await stack.execute(RETRY, id=submitted["id"]))["retryWorkflow"]
    assert retried["status"] == "RUNNING"
    done = await ended(stack, submitted["id"])
    by_key = {k: await task_of(stack, i) for k, i in ids.items()}
    assert done["status"] == "SUCCEEDED"
    assert {k: t["status"] for k, t in by_key.items()} == dict.fromkeys("abc", "SUCCEEDED")
    assert (by_key["a"]["attempts"], by_key["a"]["result"]) == (2, {"slept": 3})
    assert by_key["c"]["result"] == {"sum": 1}
    with pytest.raises(Exception) as finished:
        await stack.execute(RETRY, id=submitted["id"])
    assert error_of(finished)["code"] == "CONFLICT"

    kinds = event_keys(await stack.subscribe(UPDATES, id=submitted["id"]))
    changes = [k[3] for k in kinds if k[0] == "WorkflowStatusChanged"]
    assert changes == ["CANCELLED", "RUNNING", "SUCCEEDED"], kinds
    assert kinds[-1][0] == "WorkflowStatusChanged"


async def test_retry_workflow_reruns_the_failed_steps_and_keeps_the_succeeded_ones(
    stack: Stack,
) -> None:
    """FAIL_WORKFLOW: a SUCCEEDED, b FAILED (fails its first attempt), c CANCELLED. After
    retryWorkflow a is untouched (result, finishedAt, attempts), b's second attempt
    succeeds and c runs with its binding from a applied to its input as submitted."""
    submitted = await submit(
        stack,
        {
            "steps": [
                sum_step("a", [1, 2]),
                step("b", {"fail": {"failTimes": 1}}, ("a",)),
                {**sum_step("c", [10], ("a",)), "dependsOn": ["a", "b"]},
            ]
        },
    )
    first = await ended(stack, submitted["id"])
    before = tasks_by_key(first)
    assert first["status"] == "FAILED"
    assert [before[k]["status"] for k in "abc"] == ["SUCCEEDED", "FAILED", "CANCELLED"]
    assert before["c"]["error"]["code"] == "WORKFLOW_FAILED"
    a_before = await task_of(stack, before["a"]["id"])

    await stack.execute(RETRY, id=submitted["id"])
    done = await ended(stack, submitted["id"])
    after = {k: await task_of(stack, t["id"]) for k, t in tasks_by_key(done).items()}
    assert done["status"] == "SUCCEEDED"
    a = after["a"]
    assert (a["result"], a["finishedAt"], a["attempts"], a["startedAt"]) == (
        a_before["result"],
        a_before["finishedAt"],
        1,
        a_before["startedAt"],
    )
    assert a["events"] == a_before["events"]
    assert (after["b"]["status"], after["b"]["attempts"]) == ("SUCCEEDED", 2)
    assert after["b"]["result"] == {"succeeded_on_attempt": 2}
    assert after["c"]["input"] == {"numbers": [10, 3]} and after["c"]["result"] == {"sum": 13}


# --- bad input --------------------------------------------------------------------------------


async def test_bad_workflows_are_bad_input_naming_the_step_and_write_nothing(
    settings: Settings, engine: AsyncEngine
) -> None:
    """Each refused whole (BAD_INPUT naming the field), with nothing written; MAX_WORKFLOW
    _STEPS (3 here) steps are accepted, one more is not."""
    echo = {"echo": {"message": "x"}}
    cases: list[tuple[list[dict[str, Any]], str, str]] = [
        ([], "workflow.steps", "at least one step"),
        (
            [step("a", echo), step("b", echo, ("zzz",))],
            "workflow.steps[1].dependsOn",
            "'zzz' is not a step",
        ),
        ([step("a", echo), step("a", echo)], "workflow.steps[1].key", "'a'"),
        ([step("a", echo, ("a",))], "workflow.steps[0].dependsOn", "depends on itself"),
        (
            [step("a", echo, ("b",)), step("b", echo, ("a",))],
            "workflow.steps[0].dependsOn",
            "a -> b -> a",
        ),
        (
            [step("a", echo), step("b", echo, ("c",)), step("c", echo, ("b",))],
            "workflow.steps[1].dependsOn",
            "b -> c -> b",
        ),
        (
            [step("a", {"sleep": {"seconds": -1}})],
            "workflow.steps[0].task.sleep.seconds",
            "",
        ),
        (
            [step("a", echo), step("b", {"sum": {"numbers": []}})],
            "workflow.steps[1].task.sum.numbers",
            "",
        ),
        (
            [step("a", echo), step("b", echo), sum_step("c", [], ("a",)) | {"dependsOn": []}],
            "workflow.steps[2].bind[0].step",
            "not in dependsOn",
        ),
        (
            [
                sum_step("a", [1]),
                step("b", echo, ("a",), bind=[{"field": "text", "step": "a"}]),
            ],
            "workflow.steps[1].bind[0].field",
            "'text' is not an input field of echo",
        ),
        (
            [step("a", echo, options={"runAt": "2030-01-01T00:00:00Z"})],
            "workflow.steps[0].options.runAt",
            "not for a workflow step",
        ),
        (
            [step("a", echo, options={"delaySeconds": 5})],
            "workflow.steps[0].options.delaySeconds",
            "not for a workflow step",
        ),
        (
            [step("a", echo, options={"idempotencyKey": "k"})],
            "workflow.steps[0].options.idempotencyKey",
            "idempotencyKey",
        ),
        ([step("a b", echo)], "workflow.steps[0].key", "not a step key"),
        (
            [step(k, echo) for k in "abcd"],
            "workflow.steps",
            "MAX_WORKFLOW_STEPS (3)",
        ),
    ]
    bounded = settings.model_copy(update={"max_workflow_steps": 3})
    async with run_api(bounded) as url:
        api = await Stack.keyed(url, bounded)
        for steps, field, says in cases:
            with pytest.raises(Exception) as refused:
                await submit(api, {"steps": steps})
            error = error_of(refused)
            assert (error["code"], error["field"]) == ("BAD_INPUT", field), (steps, error)
            assert says in error["message"], (steps, error)
            assert await row_counts(engine) == (0, 0, 0), steps
        accepted = await submit(api, {"steps": [step(k, echo) for k in "abc"]})
    assert accepted["stepCount"] == 3
    assert await row_counts(engine) == (1, 3, 3)


# --- workflowUpdates --------------------------------------------------------------------------


async def test_workflow_updates_resumed_after_a_disconnect_miss_and_repeat_nothing(
    stack: Stack,
) -> None:
    """Five events, a disconnect, then the rest from the third's cursor (live, while
    the workflow runs): together exactly the history a fresh subscription replays, ending
    with WorkflowStatusChanged. From the last event's cursor: complete, nothing."""
    submitted = await submit(
        stack,
        {
            "steps": [
                sum_step("a", [1]),
                step("b", {"sleep": {"seconds": 1}}, ("a",)),
                sum_step("c", [2], ("a",)),
                sum_step("d", [], ("c",)) | {"dependsOn": ["b", "c"]},
            ]
        },
    )
    head = await stack.subscribe(UPDATES, id=submitted["id"], limit=5)
    assert len(head) == 5
    assert (await workflow_of(stack, submitted["id"]))["status"] == "RUNNING"
    cursor = head[-1]["workflowUpdates"]["cursor"]
    tail = await stack.subscribe(UPDATES, id=submitted["id"], after=cursor)
    whole = await stack.subscribe(UPDATES, id=submitted["id"])
    assert event_keys(head) + event_keys(tail) == event_keys(whole)
    kinds = event_keys(whole)
    assert len({k[1] for k in kinds}) == len(kinds)
    assert kinds[-1][0] == "WorkflowStatusChanged" and kinds[-1][3] == "SUCCEEDED"
    assert sum(1 for k in kinds if k[0] == "WorkflowStatusChanged") == 1
    assert sum(1 for k in kinds if k[0] == "StatusChanged" and k[3] == "SUCCEEDED") == 4
    started = time.monotonic()
    nothing = await stack.subscribe(UPDATES, id=submitted["id"], after=kinds[-1][1], within=5)
    assert nothing == [] and time.monotonic() - started < 2


async def test_workflow_updates_of_a_retried_workflow_follow_it_to_its_new_end(
    stack: Stack,
) -> None:
    """a fails once (FAILED, b CANCELLED); retryWorkflow runs a and b (1 s) again. A
    subscription from the first event while the rerun goes on completes only after the
    new end (FAILED, RUNNING, SUCCEEDED), and so does one resumed from the old end."""
    submitted = await submit(
        stack,
        {
            "steps": [
                step("a", {"fail": {"failTimes": 1}}),
                step("b", {"sleep": {"seconds": 1}}, ("a",)),
            ]
        },
    )
    assert (await ended(stack, submitted["id"]))["status"] == "FAILED"
    first_run = event_keys(await stack.subscribe(UPDATES, id=submitted["id"]))
    assert first_run[-1][0] == "WorkflowStatusChanged" and first_run[-1][3] == "FAILED"
    await stack.execute(RETRY, id=submitted["id"])
    whole, resumed = await asyncio.gather(
        stack.subscribe(UPDATES, id=submitted["id"]),
        stack.subscribe(UPDATES, id=submitted["id"], after=first_run[-1][1]),
    )
    kinds = event_keys(whole)
    changes = [k[3] for k in kinds if k[0] == "WorkflowStatusChanged"]
    assert changes == ["FAILED", "RUNNING", "SUCCEEDED"], kinds
    assert kinds == first_run + event_keys(resumed)
    assert (await workflow_of(stack, submitted["id"]))["status"] == "SUCCEEDED"


# --- idempotency, listing -----------------------------------------------------------------


async def test_an_idempotency_key_returns_the_first_workflow(
    api: Stack, engine: AsyncEngine
) -> None:
    """The same key again (even with other steps) returns the first workflow and writes
    nothing; another key makes another workflow."""
    first = await submit(api, {"idempotencyKey": "once", "steps": [sum_step("a", [1])]})
    assert await row_counts(engine) == (1, 1, 1)
    again = await submit(
        api, {"idempotencyKey": "once", "steps": [sum_step("x", [2]), sum_step("y", [3])]}
    )
    assert again["id"] == first["id"] and again["stepCount"] == 1
    assert [s["key"] for s in again["steps"]] == ["a"]
    assert await row_counts(engine) == (1, 1, 1)
    other = await submit(api, {"idempotencyKey": "twice", "steps": [sum_step("a", [1])]})
    assert other["id"] != first["id"]
    assert await row_counts(engine) == (2, 2, 2)


async def test_workflows_filters_by_status_and_label_and_pages(stack: Stack) -> None:
    """Newest first; status and label filters; first/after pages; another owner's
    workflows are not listed."""
    succeeded = await submit(stack, {"labels": ["x"], "steps": [sum_step("a", [1])]})
    await ended(stack, succeeded["id"])
    failed = await submit(stack, {"labels": ["x", "y"], "steps": [step("a", {"fail": {}})]})
    await ended(stack, failed["id"])
    nobody = {"queue": "nobody-serves"}
    running = await submit(
        stack, {"labels": ["y"], "steps": [step("a", {"echo": {"message": "x"}}, options=nobody)]}
    )
    other = await Stack.keyed(stack.url, stack.settings, owner="someone-else")
    await submit(other, {"labels": ["x", "y"], "steps": [sum_step("a", [1])]})

    async def ids(**filters: Any) -> list[str]:
        page = (await stack.execute(LIST, **filters))["workflows"]
        return [e["node"]["id"] for e in page["edges"]]

    everything = [running["id"], failed["id"], succeeded["id"]]
    assert await ids() == everything
    assert await ids(label="x") == [failed["id"], succeeded["id"]]
    assert await ids(label="y") == [running["id"], failed["id"]]
    assert await ids(status=["FAILED"]) == [failed["id"]]
    assert await ids(status=["RUNNING", "SUCCEEDED"]) == [running["id"], succeeded["id"]]
    assert await ids(status=["SUCCEEDED"], label="y") == []
    assert await ids(label="nothing") == []

    paged: list[str] = []
    after = None
    for expected_next in (True, True, False):
        page = (await stack.execute(LIST, first=1, after=after))["workflows"]
        (edge,) = page["edges"]
        paged.append(edge["node"]["id"])
        assert page["pageInfo"]["hasNextPage"] is expected_next
        assert page["pageInfo"]["endCursor"] == edge["cursor"]
        after = edge["cursor"]
    assert paged == everything
    page = (await stack.execute(LIST, first=1, label="x"))["workflows"]
    assert [e["node"]["id"] for e in page["edges"]] == [failed["id"]]
    assert page["pageInfo"]["hasNextPage"] is True
    page = (await stack.execute(LIST, first=1, label="x", after=page["pageInfo"]["endCursor"]))[
        "workflows"
    ]
    assert [e["node"]["id"] for e in page["edges"]] == [succeeded["id"]]
    assert page["pageInfo"]["hasNextPage"] is False


# --- bindings that fail ------------------------------------------------------------------------


async def test_a_binding_path_missing_from_the_result_fails_the_step_without_running_it(
    stack: Stack,
) -> None:
    """b binds `a.total`, which a's result lacks: b FAILED with BAD_INPUT (naming the
    path and the keys there are), never run; FAIL_WORKFLOW cancels c, which waits on b."""
    submitted = await submit(
        stack,
        {
            "steps": [
                sum_step("a", [1]),
                {
                    **sum_step("b", [], ("a",)),
                    "bind": [{"field": "numbers[]", "step": "a", "path": "total"}],
                },
                step("c", {"echo": {"message": "c"}}, ("b",)),
            ]
        },
    )
    done = await ended(stack, submitted["id"])
    by_key = {k: await task_of(stack, t["id"]) for k, t in tasks_by_key(done).items()}
    assert done["status"] == "FAILED"
    b = by_key["b"]
    assert (b["status"], b["error"]["code"], b["attempts"], b["startedAt"]) == (
        "FAILED",
        "BAD_INPUT",
        0,
        None,
    )
    assert "'total'" in b["error"]["message"] and "sum" in b["error"]["message"], b
    assert not [e for e in b["events"] if e.get("status") == "RUNNING"]
    c = by_key["c"]
    assert (c["status"], c["error"]["code"]) == ("CANCELLED", "WORKFLOW_FAILED")


async def test_a_bound_input_that_does_not_validate_fails_bad_input_when_ready(
    stack: Stack,
) -> None:
    """b's `seconds` is bound to a's whole result (an object): the bound input is checked
    when b becomes ready, so b ends FAILED with BAD_INPUT naming the field without ever
    running, although it may retry 3 times; its input shows what was bound."""
    submitted = await submit(
        stack,
        {
            "steps": [
                sum_step("a", [1]),
                step(
                    "b",
                    {"sleep": {"seconds": 0}},
                    ("a",),
                    bind=[{"field": "seconds", "step": "a"}],
                    options={"maxRetries": 3},
                ),
            ]
        },
    )
    done = await ended(stack, submitted["id"])
    b = await task_of(stack, tasks_by_key(done)["b"]["id"])
    assert done["status"] == "FAILED"
    assert (b["status"], b["error"]["code"], b["attempts"], b["startedAt"]) == (
        "FAILED",
        "BAD_INPUT",
        0,
        None,
    ), b
    assert not [e for e in b["events"] if e.get("status") == "RUNNING"]
    assert "seconds:" in b["error"]["message"] and "sleep input" in b["error"]["message"], b
    assert b["input"] == {"seconds": {"sum": 1}, "blocking": False}


# --- queues and concurrency keys ------------------------------------------------------------


async def test_steps_on_a_named_queue_with_a_concurrency_key_never_overlap(
    settings: Settings,
) -> None:
    """Two parallel 0.5 s steps on queue `steps`, concurrencyKey k (limit 1), then a
    fan-in on `default`: the two run one after the other, the fan-in after both."""
    options = {"queue": "steps", "concurrencyKey": "k"}
    workflow = {
        "steps": [
            step("a", {"sleep": {"seconds": 0.5}}, options=options),
            step("b", {"sleep": {"seconds": 0.5}}, options=options),
            step("c", {"echo": {"message": "c"}}, ("a", "b")),
        ]
    }
    serving = settings.model_copy(update={"worker_queues": "steps,default"})
    async with run_api(settings) as url, run_worker(serving):
        stack = await Stack.keyed(url, settings)
        submitted = await submit(stack, workflow)
        done = await ended(stack, submitted["id"])
        by_key = {k: await task_of(stack, t["id"]) for k, t in tasks_by_key(done).items()}
    assert done["status"] == "SUCCEEDED"
    a, b, c = by_key["a"], by_key["b"], by_key["c"]
    assert [(t["queue"], t["concurrencyKey"]) for t in (a, b, c)] == [
        ("steps", "k"),
        ("steps", "k"),
        ("default", None),
    ]
    first, second = sorted((a, b), key=lambda t: at(t["startedAt"]))
    assert at(second["startedAt"]) >= at(first["finishedAt"]), (first, second)
    assert a["attempts"] == b["attempts"] == 1
    assert at(c["startedAt"]) > at(second["finishedAt"])
