"""Who did what (issue 22): every submit, cancel, retry, pause, and schedule or workflow
change records its actor, the API key's name and owner, or the part of the service (SYSTEM)
for what the service does on its own: retries, the worker's moves, schedules' ticks, a
workflow's settling. Read over GraphQL from real servers, as the console reads them."""

from __future__ import annotations

from typing import Any

from taskrunner.config import Settings
from tests.support.schedules import CREATE, PAUSE, TRIGGER, schedule_input
from tests.support.stack import Stack, make_key
from tests.support.tasks import SUBMIT, finish
from tests.support.waiting import eventually

ACTOR = "actor { kind name owner }"
HISTORY = f"""
query($id: ID!) {{
  task(id: $id) {{
    status
    events {{
      __typename {ACTOR}
      ... on StatusChanged {{ status }}
      ... on LogAppended {{ line }}
      ... on StepReady {{ stepKey }}
    }}
  }}
}}"""
WATCH = f"""
subscription($id: ID!) {{
  taskUpdates(id: $id) {{ __typename {ACTOR} ... on StatusChanged {{ status }} }}
}}"""
CANCEL = "mutation($id: ID!) { cancelTask(id: $id) { id } }"
RETRY = "mutation($id: ID!) { retryTask(id: $id) { id } }"
CANCEL_MANY = "mutation($label: String) { cancelTasks(filter: {label: $label}) }"


def key(name: str, owner: str) -> dict[str, Any]:
    return {"kind": "API_KEY", "name": name, "owner": owner}


def system(part: str) -> dict[str, Any]:
    return {"kind": "SYSTEM", "name": part, "owner": None}


async def history(stack: Stack, task_id: str, own: bool = False) -> list[tuple[str, Any]]:
    """A task's events as (what, actor): a status, a log line or a step's readiness; the
    lines the task's own code logged (no actor) only with `own`."""
    events = (await stack.execute(HISTORY, id=task_id))["task"]["events"]
    return [
        (e.get("status") or e.get("line") or e.get("stepKey") or e["__typename"], e["actor"])
        for e in events
        if own or e["actor"] is not None or e["__typename"] != "LogAppended"
    ]


async def keyed(stack: Stack, settings: Settings, name: str, owner: str, **kw: Any) -> Stack:
    return stack.as_key(await make_key(settings, owner, name=name, **kw))


async def test_a_task_records_who_submitted_cancelled_and_retried_it(
    stack: Stack, settings: Settings
) -> None:
    alice = await keyed(stack, settings, "alice-ci", "acme")
    bob = await keyed(stack, settings, "bob-laptop", "acme")
    ops = await keyed(stack, settings, "ops", "platform", admin=True)
    sub = await alice.execute(SUBMIT, task={"sleep": {"seconds": 30}})
    task_id = sub["submitTask"]["id"]

    async def running() -> bool:
        """the task runs"""
        return [s for s, _ in await history(alice, task_id)] == ["QUEUED", "RUNNING"]

    await eventually(running, within=15)
    await ops.execute(CANCEL, id=task_id)  # an admin's key, on another owner's task
    await finish(alice, task_id)
    await bob.execute(RETRY, id=task_id)
    await bob.execute(CANCEL, id=task_id)  # QUEUED or RUNNING by now: either way, bob's

    found = await history(alice, task_id)
    assert found[:5] == [
        ("QUEUED", key("alice-ci", "acme")),
        ("RUNNING", system("worker")),
        ("cancel requested", key("ops", "platform")),
        ("CANCELLED", system("worker")),
        ("QUEUED", key("bob-laptop", "acme")),
    ]
    assert key("bob-laptop", "acme") in [actor for _, actor in found[5:]]
    own = [e for e in await history(alice, task_id, own=True) if e not in found]
    assert own and all(kind != "cancel requested" and actor is None for kind, actor in own)
    # a subscription reads the same (the backlog, then live events)
    streamed = await alice.subscribe(WATCH, id=task_id, limit=2)
    actors = [e["taskUpdates"]["actor"] for e in streamed]
    assert actors == [key("alice-ci", "acme"), system("worker")]


async def test_the_service_records_itself_for_retries_and_bulk_cancels_record_the_key(
    stack: Stack, settings: Settings
) -> None:
    alice = await keyed(stack, settings, "alice-bulk", "acme")
    sub = await alice.execute(SUBMIT, task={"fail": {"failTimes": 1}}, options={"maxRetries": 1})
    failing = sub["submitTask"]["id"]
    await finish(alice, failing)
    assert await history(alice, failing) == [
        ("QUEUED", key("alice-bulk", "acme")),
        ("RUNNING", system("worker")),
        ("QUEUED", system("retry")),
        ("RUNNING", system("worker")),
        ("SUCCEEDED", system("worker")),
    ]
    held = await alice.execute(
        SUBMIT, task={"echo": {"message": "x"}}, options={"delaySeconds": 600, "labels": ["b"]}
    )
    assert (await alice.execute(CANCEL_MANY, label="b"))["cancelTasks"] == 1
    assert (await history(alice, held["submitTask"]["id"]))[-1] == (
        "CANCELLED",
        key("alice-bulk", "acme"),
    )


SCHEDULE_ACTORS = "id createdBy { kind name owner } changedBy { kind name owner } changedAt"


async def test_schedules_and_queues_record_who_changed_them(
    stack: Stack, settings: Settings
) -> None:
    alice = await keyed(stack, settings, "alice-cron", "acme")
    bob = await keyed(stack, settings, "bob-cron", "acme")
    created = (await alice.execute(CREATE, s=schedule_input("actors", everySeconds=1)))[
        "createSchedule"
    ]
    read = f"query($id: ID!) {{ schedule(id: $id) {{ {SCHEDULE_ACTORS} }} }}"
    first = (await alice.execute(read, id=created["id"]))["schedule"]
    assert first["createdBy"] == key("alice-cron", "acme")
    assert first["changedBy"] is None and first["changedAt"] is None

    ticks: list[str] = []

    async def ticked() -> bool:
        """the schedule fired a tick"""
        tasks = (await alice.execute(TASKS_OF, id=created["id"]))["schedule"]["tasks"]["edges"]
        ticks[:] = [t["node"]["id"] for t in tasks]
        return bool(ticks)

    await eventually(ticked, within=15)
    assert (await history(alice, ticks[0]))[0] == ("QUEUED", system("schedule"))
    await bob.execute(PAUSE, id=created["id"])
    paused = (await alice.execute(read, id=created["id"]))["schedule"]
    assert paused["createdBy"] == key("alice-cron", "acme")
    assert paused["changedBy"] == key("bob-cron", "acme") and paused["changedAt"]
    triggered = (await bob.execute(TRIGGER, id=created["id"]))["triggerSchedule"]["id"]
    assert (await history(alice, triggered))[0] == ("QUEUED", key("bob-cron", "acme"))

    ops = await keyed(stack, settings, "ops-queues", "platform", admin=True)
    pause = 'mutation { pauseQueue(name: "actors") { name paused changedBy { kind name owner } } }'
    queue = (await ops.execute(pause))["pauseQueue"]
    assert queue["paused"] and queue["changedBy"] == key("ops-queues", "platform")
    listed = (await alice.execute("{ queues { name changedBy { name } changedAt } }"))["queues"]
    (mine,) = [q for q in listed if q["name"] == "actors"]
    assert mine["changedBy"] == {"name": "ops-queues"} and mine["changedAt"]


TASKS_OF = "query($id: ID!) { schedule(id: $id) { tasks(first: 1) { edges { node { id } } } } }"
SUBMIT_WORKFLOW = """
mutation($w: WorkflowInput!) { submitWorkflow(workflow: $w) { id steps { key task { id } } } }"""
CANCEL_WORKFLOW = "mutation($id: ID!) { cancelWorkflow(id: $id) { id } }"


async def test_a_workflows_changes_record_who_asked_and_its_own_moves_the_workflow(
    stack: Stack, settings: Settings
) -> None:
    alice = await keyed(stack, settings, "alice-flow", "acme")
    bob = await keyed(stack, settings, "bob-flow", "acme")
    flow = {
        "name": "actors",
        "steps": [
            {"key": "a", "task": {"echo": {"message": "a"}}},
            {"key": "b", "task": {"sleep": {"seconds": 30}}, "dependsOn": ["a"]},
            {"key": "c", "task": {"echo": {"message": "c"}}, "dependsOn": ["b"]},
        ],
    }
    submitted = (await alice.execute(SUBMIT_WORKFLOW, w=flow))["submitWorkflow"]
    ids = {s["key"]: s["task"]["id"] for s in submitted["steps"]}

    async def b_running() -> bool:
        """step b runs"""
        return "RUNNING" in [s for s, _ in await history(alice, ids["b"])]

    await eventually(b_running, within=15)
    await bob.execute(CANCEL_WORKFLOW, id=submitted["id"])
    await finish(alice, ids["b"])
    await finish(alice, ids["c"])
    b = await history(alice, ids["b"])
    assert b[:4] == [
        ("QUEUED", key("alice-flow", "acme")),
        ("b", system("workflow")),  # made ready by a's end
        ("RUNNING", system("worker")),
        ("cancel requested", key("bob-flow", "acme")),
    ]
    assert ("CANCELLED", key("bob-flow", "acme")) in await history(alice, ids["c"])
