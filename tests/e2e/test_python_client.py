"""The Python client example, frontend-examples/python-client, against a real api and
worker: its operations (tasks, bulk actions, the live feeds, artifacts, workflows,
schedules, queues, the service's reads), following across a dropped connection, its
README's example as written, and follow.py. (That it matches schema.graphql is
test_python_client_schema.py's.)"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from types import ModuleType
from typing import Any

import httpx
import pytest
from gql.transport.exceptions import TransportClosed

from tests.support.python_client import CLIENT_DIR, imported_client
from tests.support.stack import Stack, make_key
from tests.support.waiting import eventually


@pytest.fixture(scope="module")
def client() -> Iterator[ModuleType]:
    with imported_client() as module:
        yield module


def statuses(client: ModuleType, events: list[Any]) -> list[str]:
    """The statuses of the StatusChanged among `events`, in order."""
    return [str(e.status) for e in events if isinstance(e, client.TaskEventStatusChanged)]


async def to_the_end(tasks: Any, task_id: str, within: float = 30) -> list[Any]:
    """The task's events, followed until it finishes."""
    async with asyncio.timeout(within):
        return [event async for event in tasks.follow(task_id)]


async def test_submit_get_list_cancel_and_retry_tasks_one_by_one_and_in_bulk(
    client: ModuleType, stack: Stack
) -> None:
    tasks = client.TaskrunnerClient(stack.graphql_url, stack.key)
    labelled = client.TaskOptionsInput(labels=("client",), max_retries=0)
    slow = await tasks.submit_task(client.SleepInput(seconds=60), labelled)
    assert isinstance(slow, client.Task)
    assert (slow.type, slow.status, slow.labels, slow.max_retries, slow.attempts) == (
        "sleep", client.TaskStatus.QUEUED, ("client",), 0, 0
    )  # fmt: skip
    echo = await tasks.submit_task(client.EchoInput(message="hi"), labelled)
    assert statuses(client, await to_the_end(tasks, echo.id)) == [
        "QUEUED", "RUNNING", "SUCCEEDED"
    ]  # fmt: skip
    done = await tasks.get_task(echo.id)
    assert done is not None
    assert (done.status, done.result, done.attempts) == ("SUCCEEDED", {"message": "hi"}, 1)
    assert done.finished_at is not None and done.finished_at >= done.created_at
    assert await tasks.get_task(str(uuid.uuid4())) is None

    batch = await tasks.submit_tasks(
        [
            client.TaskSubmissionInput(task=client.SumInput(numbers=(1, 2)), options=labelled),
            client.TaskSubmissionInput(task=client.EchoInput(message="unlabelled")),
        ]
    )
    assert [(t.type, t.labels) for t in batch] == [("sum", ("client",)), ("echo", ())]

    page = await tasks.list_tasks(client.TaskFilter(label="client"))
    assert [edge.node.id for edge in page.edges] == [batch[0].id, echo.id, slow.id]
    assert page.page_info.has_next_page is False
    first = await tasks.list_tasks(client.TaskFilter(label="client"), first=2)
    assert first.page_info.has_next_page is True
    rest = await tasks.list_tasks(
        client.TaskFilter(label="client"), first=2, after=first.page_info.end_cursor
    )
    assert [edge.node.id for edge in rest.edges] == [slow.id]

    await tasks.cancel_task(slow.id)
    assert statuses(client, await to_the_end(tasks, slow.id))[-1] == "CANCELLED"
    retried = await tasks.retry_task(slow.id)
    assert (retried.id, retried.status) == (slow.id, client.TaskStatus.QUEUED)
    with pytest.raises(client.TaskrunnerError) as refused:
        await tasks.retry_task(echo.id)  # SUCCEEDED: nothing to retry
    assert refused.value.code == "CONFLICT"

    unfinished = client.TaskFilter(label="client", status=("QUEUED", "RUNNING"))
    await to_the_end(tasks, batch[0].id)
    assert await tasks.cancel_tasks(unfinished) == 1  # the retried sleep
    assert statuses(client, await to_the_end(tasks, slow.id))[-1] == "CANCELLED"
    assert await tasks.retry_tasks(client.TaskFilter(label="client", status=("CANCELLED",))) == 1
    again = await tasks.get_task(slow.id)
    assert again is not None and again.status in ("QUEUED", "RUNNING")
    assert await tasks.cancel_tasks(unfinished) == 1


async def test_tasks_updates_streams_the_callers_matching_tasks_and_resumes_from_a_cursor(
    client: ModuleType, stack: Stack
) -> None:
    tasks = client.TaskrunnerClient(stack.graphql_url, stack.key)
    feed = client.TaskFilter(label="feed")

    async def collect(n: int, after: str | None = None) -> list[Any]:
        got: list[Any] = []
        async with aclosing(tasks.tasks_updates(feed, after)) as events:
            async for event in events:
                got.append(event)
                if len(got) == n:
                    return got
        return got

    watching = asyncio.create_task(collect(6))
    await asyncio.sleep(0.5)  # the subscription is open before anything happens
    labelled = client.TaskOptionsInput(labels=("feed",))
    a = await tasks.submit_task(client.EchoInput(message="a"), labelled)
    await tasks.submit_task(client.EchoInput(message="not in the feed"))
    b = await tasks.submit_task(client.EchoInput(message="b"), labelled)
    got = await asyncio.wait_for(watching, 30)
    assert all(isinstance(e, client.TaskEventStatusChanged) for e in got)
    by_task: dict[str, list[str]] = {}
    for event in got:
        by_task.setdefault(event.task_id, []).append(str(event.status))
    assert by_task == {
        a.id: ["QUEUED", "RUNNING", "SUCCEEDED"],
        b.id: ["QUEUED", "RUNNING", "SUCCEEDED"],
    }
    rest = await asyncio.wait_for(collect(3, after=got[2].cursor), 30)
    assert rest == got[3:]


async def test_artifacts_attached_and_uploaded(client: ModuleType, stack: Stack) -> None:
    tasks = client.TaskrunnerClient(stack.graphql_url, stack.key)
    task = await tasks.submit_task(client.SleepInput(seconds=60))
    small = await tasks.attach_artifact(
        task.id, "hello.txt", base64.b64encode(b"hello").decode(), "text/plain"
    )
    assert (small.name, small.size, small.content_type) == ("hello.txt", 5, "text/plain")
    upload = await tasks.create_artifact_upload(task.id, "big.bin")
    assert upload.method == "PUT"
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await http.put(upload.url, content=b"x" * 1000)).status_code == 200
        big = await tasks.complete_artifact_upload(task.id, upload.id)
        assert (big.name, big.size) == ("big.bin", 1000)
        assert (await http.get(big.url)).content == b"x" * 1000
    got = await tasks.get_task(task.id)
    assert got is not None and sorted(a.name for a in got.artifacts) == ["big.bin", "hello.txt"]
    await tasks.cancel_task(task.id)


async def test_a_schedule_created_listed_changed_fired_and_deleted(
    client: ModuleType, stack: Stack
) -> None:
    tasks = client.TaskrunnerClient(stack.graphql_url, stack.key)
    created = await tasks.create_schedule(
        client.ScheduleInput(
            name="client hourly",
            every_seconds=3600,
            task=client.EchoInput(message="tick"),
            options=client.TaskOptionsInput(labels=("scheduled",)),
        )
    )
    assert isinstance(created, client.Schedule)
    assert (created.name, created.every_seconds, created.cron, created.timezone) == (
        "client hourly", 3600, None, "UTC"
    )  # fmt: skip
    assert (created.paused, created.overlap, created.catchup) == (False, "ALLOW", "ONE")
    assert created.task == {"echo": {"message": "tick"}}
    assert created.next_run_at is not None and created.created_by is not None
    assert created.created_by.kind == client.ActorKind.API_KEY

    listed = await tasks.list_schedules()
    assert [edge.node.id for edge in listed.edges] == [created.id]
    got = await tasks.get_schedule(created.id)
    assert got is not None and got.name == "client hourly"

    changed = await tasks.update_schedule(
        created.id,
        client.ScheduleInput(
            name="client daily",
            cron="0 6 * * *",
            timezone="Europe/Paris",
            task=client.EchoInput(message="tock"),
        ),
    )
    assert (changed.name, changed.cron, changed.every_seconds, changed.timezone) == (
        "client daily", "0 6 * * *", None, "Europe/Paris"
    )  # fmt: skip
    assert (await tasks.pause_schedule(created.id)).paused is True
    resumed = await tasks.resume_schedule(created.id)
    assert resumed.paused is False and resumed.next_run_at is not None

    fired = await tasks.trigger_schedule(created.id)
    assert (fired.type, fired.schedule_id) == ("echo", created.id)
    assert fired.scheduled_for is not None
    events = await to_the_end(tasks, fired.id)
    assert events[-1].result == {"message": "tock"}
    schedule = await tasks.schedule_tasks(created.id)
    assert schedule is not None
    assert [edge.node.id for edge in schedule.tasks.edges] == [fired.id]

    assert await tasks.delete_schedule(created.id) is True
    assert await tasks.get_schedule(created.id) is None
    assert (await tasks.list_schedules()).edges == ()
    assert (await tasks.get_task(fired.id)) is not None  # the tasks it fired stay


async def test_submit_a_workflow_and_follow_it_to_the_end(client: ModuleType, stack: Stack) -> None:
    """A diamond of `sum` steps: d waits for b and c; follow_workflow yields the steps'
    events, each once, and ends with the workflow's SUCCEEDED; d's result is read back."""
    tasks = client.TaskrunnerClient(stack.graphql_url, stack.key)

    def step(key: str, numbers: tuple[float, ...], *parents: str) -> Any:
        return client.WorkflowStepInput(
            key=key,
            task=client.SumInput(numbers=numbers),
            depends_on=parents,
            bind=[client.StepBindingInput(field="numbers[]", step=p, path="sum") for p in parents],
        )

    diamond = client.WorkflowInput(
        name="client diamond",
        labels=("diamond",),
        steps=[step("a", (1, 2)), step("b", (10,), "a"), step("c", (100,), "a"),
               step("d", (1000,), "b", "c")],
    )  # fmt: skip
    submitted = await tasks.submit_workflow(diamond)
    assert isinstance(submitted, client.Workflow)
    assert (submitted.status, submitted.step_count) == (client.WorkflowStatus.RUNNING, 4)
    assert [(s.key, s.depends_on) for s in submitted.steps] == [
        ("a", ()), ("b", ("a",)), ("c", ("a",)), ("d", ("b", "c"))
    ]  # fmt: skip
    key_of = {s.task.id: s.key for s in submitted.steps}

    async with asyncio.timeout(30):
        events = [e async for e in tasks.follow_workflow(submitted.id)]
    last = events[-1]
    assert isinstance(last, client.TaskEventWorkflowStatusChanged)
    assert (last.workflow_id, last.workflow_status) == (submitted.id, "SUCCEEDED")
    assert len({e.cursor for e in events}) == len(events), "no event twice"
    ready = [e for e in events if isinstance(e, client.TaskEventStepReady)]
    assert sorted(e.step_key for e in ready) == ["b", "c", "d"]
    assert all(key_of[e.task_id] == e.step_key and e.workflow_id == submitted.id for e in ready)
    succeeded = {
        key_of[e.task_id]: e.result
        for e in events
        if isinstance(e, client.TaskEventStatusChanged) and e.status == "SUCCEEDED"
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
    assert next(s.task for s in done.steps if s.key == "d").result == {"sum": 1116}
    assert await tasks.get_workflow(str(uuid.uuid4())) is None
    listed = await tasks.list_workflows(label="diamond")
    assert [(e.node.id, e.node.status) for e in listed.edges] == [(submitted.id, "SUCCEEDED")]


async def test_workflows_submitted_together_cancelled_and_retried(
    client: ModuleType, stack: Stack
) -> None:
    tasks = client.TaskrunnerClient(stack.graphql_url, stack.key)

    def one_step(seconds: float) -> Any:
        return client.WorkflowInput(
            steps=[client.WorkflowStepInput(key="nap", task=client.SleepInput(seconds=seconds))]
        )

    slow, quick = await tasks.submit_workflows([one_step(60), one_step(0)])
    assert (slow.step_count, quick.step_count) == (1, 1)
    cancelled = await tasks.cancel_workflow(slow.id)
    assert cancelled.id == slow.id
    async with asyncio.timeout(30):
        ended = [e async for e in tasks.follow_workflow(slow.id)][-1]
    assert ended.workflow_status == "CANCELLED"
    retried = await tasks.retry_workflow(slow.id)
    assert (retried.id, retried.status) == (slow.id, "RUNNING")
    await tasks.cancel_workflow(slow.id)


async def test_an_admin_pauses_and_resumes_a_queue(client: ModuleType, stack: Stack) -> None:
    user = client.TaskrunnerClient(stack.graphql_url, stack.key)
    admin = client.TaskrunnerClient(
        stack.graphql_url, await make_key(stack.settings, "ops", name="ops-key", admin=True)
    )
    with pytest.raises(client.TaskrunnerError) as refused:
        await user.pause_queue("default")
    assert refused.value.code == "FORBIDDEN"

    paused = await admin.pause_queue("default")
    assert (paused.name, paused.paused) == ("default", True)
    assert paused.changed_by is not None and paused.changed_by.name == "ops-key"
    held = await user.submit_task(client.EchoInput(message="held"))
    queues = {queue.name: queue for queue in await user.queues()}
    assert (queues["default"].paused, queues["default"].queued) == (True, 1)
    await asyncio.sleep(1.0)  # the worker polls several times meanwhile
    still = await user.get_task(held.id)
    assert still is not None and still.status == client.TaskStatus.QUEUED

    resumed = await admin.resume_queue("default")
    assert (resumed.name, resumed.paused) == ("default", False)
    assert statuses(client, await to_the_end(user, held.id))[-1] == "SUCCEEDED"


async def test_the_service_reads_limits_types_workers_stats_and_processed_keys(
    client: ModuleType, stack: Stack
) -> None:
    tasks = client.TaskrunnerClient(stack.graphql_url, stack.key)
    limits = await tasks.limits()
    assert limits.max_batch_size == stack.settings.max_batch_size
    assert limits.max_page_size == stack.settings.max_page_size
    types = {t.name: t for t in await tasks.task_types()}
    assert set(client.TASK_TYPES) <= set(types)
    assert "seconds" in types["sleep"].input_schema["properties"]

    async def one_worker() -> bool:
        """the stack's worker is live (its first heartbeat is in)"""
        return len(await tasks.workers()) == 1

    await eventually(one_worker, within=10)
    (worker,) = await tasks.workers()
    assert "default" in worker.queues and worker.pid > 0

    assert (await tasks.processed("client", "k1")).processed is False
    marked = await tasks.submit_task(
        client.EchoInput(message="once"), client.TaskOptionsInput(labels=("client:k1",))
    )
    await to_the_end(tasks, marked.id)
    processed = await tasks.processed("client", "k1")
    assert processed.processed is True
    assert processed.latest_task is not None and processed.latest_task.id == marked.id

    stats = await tasks.stats(bucket_seconds=60)
    counts = {str(c.status): c.count for c in stats.counts}
    assert counts["SUCCEEDED"] == 1 and counts["FAILED"] == 0
    assert stats.bucket_seconds == 60


async def test_the_client_resumes_after_a_dropped_connection(
    client: ModuleType, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its websocket closes after two events: it subscribes again after the second one's
    cursor, and the events it yields are the task's history, none missed or repeated."""
    tasks = client.TaskrunnerClient(stack.graphql_url, stack.key)
    task = await tasks.submit_task(client.ChatterInput(progress_steps=4, interval_seconds=0.05))
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
    assert followed == history
    assert statuses(client, followed)[-1] == "SUCCEEDED"
    progress = [e for e in followed if isinstance(e, client.TaskEventProgressReported)]
    assert progress[-1].progress == 1.0


# --- the README's example, follow.py -----------------------------------------------------


def readme_example() -> tuple[str, list[str]]:
    """The python block of the client's README and the output it says it prints."""
    text = (CLIENT_DIR / "README.md").read_text(encoding="utf-8")
    (code,) = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    printed = re.search(r"It prints:\n\n```text\n(.*?)```", text, re.DOTALL)
    assert printed is not None
    return code, printed.group(1).splitlines()


async def run_python(*args: str, env: dict[str, str], within: float = 60) -> tuple[int, str, str]:
    """Run the python of this venv in the client's folder; its exit code, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=CLIENT_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"{args} still running after {within}s:\n{out.decode()}") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKRUNNER_")}
    env.pop("PYTHONPATH", None)  # the client is imported from its folder, as a user would
    return {**env, **extra}


async def test_the_readme_example_runs_as_written_and_prints_what_it_says(
    client: ModuleType, stack: Stack
) -> None:
    assert stack.key is not None
    code, printed = readme_example()
    env = clean_env(TASKRUNNER_URL=stack.graphql_url, TASKRUNNER_API_KEY=stack.key)
    status, out, err = await run_python("-c", code, env=env)
    assert (status, err) == (0, ""), (out, err)
    assert out.splitlines() == printed
    # and what it did is there: the labelled task, and no schedule left
    tasks = client.TaskrunnerClient(stack.graphql_url, stack.key)
    page = await tasks.list_tasks(client.TaskFilter(label="readme"))
    assert [(e.node.type, e.node.result) for e in page.edges] == [("sleep", {"slept": 1.0})]
    assert (await tasks.list_schedules()).edges == ()


async def follow(*args: str, within: float = 60) -> tuple[int, list[str], str]:
    """Run follow.py; its exit code, stdout lines and stderr."""
    code, out, err = await run_python("follow.py", *args, env=clean_env(), within=within)
    return code, out.splitlines(), err


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
    assert "Did you mean 'sleep'" in err and "Traceback" not in err, err
