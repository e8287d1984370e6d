"""The Python client example, frontend-examples/python-client: its models and operations
match schema.graphql (and a schema that drifted is caught), follow.py submits a task and
follows it to the end against a real api and worker, and submit_workflow with
follow_workflow runs a diamond to its end."""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from types import ModuleType
from typing import Any

import pytest
from gql.transport.exceptions import TransportClosed
from graphql import GraphQLInterfaceType, build_ast_schema, parse, print_ast, validate
from pydantic import TypeAdapter

from tests.support.environment import repo_root
from tests.support.stack import Stack

CLIENT_DIR = repo_root() / "frontend-examples" / "python-client"
SCHEMA_TEXT = (repo_root() / "schema.graphql").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def client() -> Iterator[ModuleType]:
    """The example's `taskrunner_client` package, imported from its folder."""
    sys.path.insert(0, str(CLIENT_DIR))
    try:
        yield importlib.import_module("taskrunner_client")
    finally:
        sys.path.remove(str(CLIENT_DIR))


def test_operations_match_the_schema(client: ModuleType) -> None:
    schema = build_ast_schema(parse(SCHEMA_TEXT))
    assert client.check_models(schema) == []
    operations = client.Operations.build(schema)
    requests = (
        operations.submit_task,
        operations.get_task,
        operations.task_updates,
        operations.submit_workflow,
        operations.get_workflow,
        operations.workflow_updates,
    )
    for request in requests:
        assert validate(schema, request.document) == [], print_ast(request.document)
    # every kind of event has a model (an unknown one would still be read, as OtherEvent)
    task_event = schema.get_type("TaskEvent")
    assert isinstance(task_event, GraphQLInterfaceType)
    kinds = {t.name for t in schema.get_implementations(task_event).objects}
    assert kinds == {model.__name__ for model in client.models.EVENT_MODELS}
    unknown = {"__typename": "TaskPaused", "cursor": "c", "taskId": "t", "at": "2026-01-01T00:00Z"}
    read = TypeAdapter(client.TaskEvent)
    assert isinstance(read.validate_python(unknown), client.OtherEvent)
    # and every known kind is read as its own model, not refused nor taken for another
    samples: dict[str, dict[str, Any]] = {
        "StatusChanged": {"status": "QUEUED"},
        "ProgressReported": {"progress": 0.5},
        "LogAppended": {"level": "INFO", "line": "hi"},
        "ArtifactAdded": {
            "artifact": {"id": "a", "name": "n", "contentType": "t", "size": 1, "url": "u"}
        },
        "TickSkipped": {"scheduleId": "s", "scheduledFor": "2026-01-01T00:00Z"},
        "StepReady": {"workflowId": "w", "stepKey": "d"},
        "WorkflowStatusChanged": {"workflowId": "w", "workflowStatus": "SUCCEEDED"},
    }
    assert set(samples) == kinds
    for model in client.models.EVENT_MODELS:
        name = model.__name__
        event = read.validate_python({**unknown, "__typename": name, **samples[name]})
        assert type(event) is model, name
    assert repo_root() / "schema.graphql" == client.operations.SCHEMA_PATH


@pytest.mark.parametrize(
    ("before", "after", "complaint"),
    [
        ("  progress: Float!\n", "  progress: Float\n", "ProgressReported.progress is nullable"),
        ("  line: String!\n", "  text: String!\n", "LogAppended.line (of LogAppended) is not"),
        ("  size: Int!\n", "  size: Float!\n", "Artifact.size: the schema's Float"),
        ("  QUEUED\n  RUNNING\n", "  QUEUED\n  PAUSED\n  RUNNING\n", "is not the enum"),
        (
            "  workflowStatus: WorkflowStatus!\n",
            "  workflowStatus: String!\n",
            "WorkflowStatusChanged.workflowStatus: the schema's String",
        ),
        (
            "  idempotencyKey: String\n  labels: [String!]!\n",
            "  idempotencyKey: String\n  labels: String!\n",
            "Task.labels: a list on one side",
        ),
        ("  stepCount: Int!\n", "  stepCount: Int\n", "Workflow.stepCount is nullable"),
    ],
)
def test_a_drifted_schema_is_caught(
    client: ModuleType, before: str, after: str, complaint: str
) -> None:
    assert SCHEMA_TEXT.count(before) == 1, before
    drifted = build_ast_schema(parse(SCHEMA_TEXT.replace(before, after)))
    problems = client.check_models(drifted)
    assert any(complaint in problem for problem in problems), problems
    with pytest.raises(client.SchemaMismatch, match=complaint.split(" ")[0]):
        client.Operations.build(drifted)


async def test_input_is_checked_before_sending(client: ModuleType) -> None:
    nowhere = client.TaskrunnerClient("http://127.0.0.1:9/graphql", "trk_unused")
    with pytest.raises(ValueError, match=r"unknown field 'slep'\. Did you mean 'sleep'"):
        await nowhere.submit_task({"slep": {"seconds": 1}})
    with pytest.raises(ValueError, match=r"TaskOptionsInput\.priority: Int cannot"):
        await nowhere.submit_task({"sleep": {"seconds": 1}}, {"priority": "high"})


async def test_the_client_resumes_after_a_dropped_connection(
    client: ModuleType, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its websocket closes after two events: it subscribes again after the second one's
    cursor, and the events it yields are the task's history, none missed or repeated."""
    tasks = client.TaskrunnerClient(stack.graphql_url, stack.key)
    task = await tasks.submit_task({"chatter": {"progressSteps": 4, "intervalSeconds": 0.05}})
    subscribe = tasks.task_updates
    calls: list[str | None] = []

    async def dropping(task_id: str, after: str | None = None) -> AsyncIterator[object]:
        calls.append(after)
        got = 0
        async with aclosing(subscribe(task_id, after)) as events:
            async for event in events:
                yield event
                got += 1
                if len(calls) == 1 and got == 2:
                    raise TransportClosed("dropped on purpose")

    monkeypatch.setattr(tasks, "task_updates", dropping)
    async with asyncio.timeout(30):
        followed = [event async for event in tasks.follow(task.id)]
        history = [event async for event in subscribe(task.id)]
    assert calls == [None, history[1].cursor]
    assert _unsigned(followed) == _unsigned(history)
    assert followed[-1].status == client.TaskStatus.SUCCEEDED


async def test_submit_workflow_and_follow_it_to_the_end(client: ModuleType, stack: Stack) -> None:
    """A diamond of `sum` steps through submit_workflow: d waits for b and c; follow_workflow
    yields the steps' events as typed models, each once, and ends with the workflow's
    SUCCEEDED; d's bound input and result are read back with get_workflow."""
    tasks = client.TaskrunnerClient(stack.graphql_url, stack.key)

    def step(key: str, numbers: list[int], *parents: str) -> dict[str, object]:
        return {
            "key": key,
            "task": {"sum": {"numbers": numbers}},
            "dependsOn": list(parents),
            "bind": [{"field": "numbers[]", "step": p, "path": "sum"} for p in parents],
        }

    diamond = {
        "name": "client diamond",
        "steps": [
            step("a", [1, 2]),
            step("b", [10], "a"),
            step("c", [100], "a"),
            step("d", [1000], "b", "c"),
        ],
    }
    with pytest.raises(ValueError, match=r"WorkflowInput\.steps\.0: .* required field 'key'"):
        await tasks.submit_workflow({"steps": [{"task": {"sum": {"numbers": [1]}}}]})
    submitted = await tasks.submit_workflow(diamond)
    assert isinstance(submitted, client.Workflow)
    assert (submitted.status, submitted.step_count) == (client.WorkflowStatus.RUNNING, 4)
    assert [(s.key, s.depends_on) for s in submitted.steps] == [
        ("a", []),
        ("b", ["a"]),
        ("c", ["a"]),
        ("d", ["b", "c"]),
    ]
    key_of = {s.task.id: s.key for s in submitted.steps}

    async with asyncio.timeout(30):
        events = [e async for e in tasks.follow_workflow(submitted.id)]
    last = events[-1]
    assert isinstance(last, client.WorkflowStatusChanged)
    assert (last.workflow_id, last.workflow_status) == (
        submitted.id,
        client.WorkflowStatus.SUCCEEDED,
    )
    assert len({e.cursor for e in events}) == len(events), "no event twice"
    assert not any(isinstance(e, client.OtherEvent) for e in events)
    ready = [e for e in events if isinstance(e, client.StepReady)]
    assert sorted(e.step_key for e in ready) == ["b", "c", "d"]
    assert all(key_of[e.task_id] == e.step_key and e.workflow_id == submitted.id for e in ready)
    succeeded = {
        key_of[e.task_id]: e.result
        for e in events
        if isinstance(e, client.StatusChanged) and e.status == client.TaskStatus.SUCCEEDED
    }
    assert succeeded == {"a": {"sum": 3}, "b": {"sum": 13}, "c": {"sum": 103}, "d": {"sum": 1116}}

    # resumed after the StepReady of d: only what followed it, up to the end
    cut = events.index(next(e for e in ready if e.step_key == "d"))
    async with asyncio.timeout(30):
        rest = [e async for e in tasks.workflow_updates(submitted.id, events[cut].cursor)]
    assert rest == events[cut + 1 :]

    done = await tasks.get_workflow(submitted.id)
    assert done is not None and done.status == client.WorkflowStatus.SUCCEEDED
    assert done.finished_at is not None
    d = next(s.task for s in done.steps if s.key == "d")
    assert d.result == {"sum": 1116}
    assert await tasks.get_workflow("00000000-0000-0000-0000-000000000000") is None


def _unsigned(events: list[Any]) -> list[Any]:
    """The events without their artifacts' download URLs: a URL is signed when the event is
    read, with an expiry counted from then, so two reads a second apart differ in it."""
    return [
        e.model_copy(update={"artifact": e.artifact.model_copy(update={"url": ""})})
        if hasattr(e, "artifact")
        else e
        for e in events
    ]


async def follow(*args: str, within: float = 60) -> tuple[int, list[str], str]:
    """Run follow.py; its exit code, stdout lines and stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKRUNNER_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CLIENT_DIR / "follow.py"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"follow.py still running after {within}s:\n{out.decode()}") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode().splitlines(), err.decode()


def positions(lines: list[str], *needles: str) -> list[int]:
    """Where each needle first appears, each after the previous one (fails if one doesn't)."""
    found, start = [], 0
    for needle in needles:
        start = next(
            (i for i in range(start, len(lines)) if needle in lines[i]),
            -1,
        )
        assert start >= 0, f"{needle!r} missing (in order) from:\n" + "\n".join(lines)
        found.append(start)
    return found


async def test_follow_submits_and_follows_a_task_to_the_end(stack: Stack) -> None:
    assert stack.key is not None
    code, lines, err = await follow("--url", stack.graphql_url, "--key", stack.key, "--sleep", "1")
    assert code == 0, (lines, err)
    assert err == ""
    positions(
        lines,
        "submitted ",
        "status QUEUED",
        "status RUNNING",
        "progress 100% slept 1s of 1s",
        'status SUCCEEDED result={"slept": 1.0}',
    )
    assert lines[-1].endswith('status SUCCEEDED result={"slept": 1.0}')

    # the same task again, by id: its whole history, then only what followed RUNNING
    task_id = lines[0].split()[1]
    by_id = ("--url", stack.graphql_url, "--key", stack.key, "--id", task_id)
    code, again, _ = await follow(*by_id)
    assert code == 0
    assert again == lines[1:]
    events = await stack.execute(
        "query($id: ID!) { task(id: $id) { events { cursor ... on StatusChanged { status } } } }",
        id=task_id,
    )
    running = next(e for e in events["task"]["events"] if e.get("status") == "RUNNING")
    code, resumed, _ = await follow(*by_id, "--after", running["cursor"])
    assert code == 0
    assert resumed == lines[lines.index(next(x for x in lines if "status RUNNING" in x)) + 1 :]


async def test_follow_exit_codes(stack: Stack) -> None:
    assert stack.key is not None
    url = stack.graphql_url
    failing = (
        "--task", '{"fail": {"message": "on purpose", "failTimes": 1}}',
        "--options", '{"maxRetries": 0, "labels": ["python-client"]}',
    )  # fmt: skip
    failed, wrong_key, no_key, misspelt = await asyncio.gather(  # one process each, at once
        follow("--url", url, "--key", stack.key, *failing),
        follow("--url", url, "--key", "trk_wrong", "--sleep", "0"),
        follow("--url", url, "--sleep", "0"),
        follow("--url", url, "--key", stack.key, "--task", '{"slep": {}}'),
    )
    code, lines, _ = failed
    assert code == 1, lines
    positions(lines, "status RUNNING", "status FAILED error=")
    assert "on purpose" in lines[-1]

    for code, lines, err in (wrong_key, no_key):
        assert (code, lines) == (2, [])
        assert err.startswith("error: UNAUTHENTICATED: ") and "Traceback" not in err, err

    code, lines, err = misspelt
    assert (code, lines) == (2, [])
    assert "Did you mean 'sleep'" in err
