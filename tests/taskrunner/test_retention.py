"""Retention (taskrunner.retention): what finished over TASK_RETENTION_DAYS ago goes, with
its events, artifacts (bytes too) and, for a workflow, its steps; what is unfinished, fresh,
or referred to by something live stays. Batches are bounded. Ages are made by moving a row's
finished_at back; everything else goes through the api, the domain and a real worker."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Sequence
from datetime import timedelta

import pytest
import sqlalchemy as sa
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import actors, connections, retention
from taskrunner.artifacts.storage import ArtifactStore, make_store
from taskrunner.config import Settings
from taskrunner.submissions import Submission, insert
from tests.support.artifacts import ATTACH, store_keys
from tests.support.rows import wait_for
from tests.support.schedules import TRIGGER
from tests.support.schedules import create as create_schedule
from tests.support.servers import run_worker
from tests.support.stack import Stack
from tests.support.tasks import submit

T = actors.key("tester", "tester")  # who submits the rows these tests write
WEEK = timedelta(days=7)
CANCEL = "mutation($id: ID!) { cancelTask(id: $id) { id status } }"
GET = "query($id: ID!) { task(id: $id) { id status } }"
SUBMIT_WORKFLOW = """
mutation($w: WorkflowInput!) {
  submitWorkflow(workflow: $w) { id status steps { key task { id } } }
}"""
CANCEL_WORKFLOW = "mutation($id: ID!) { cancelWorkflow(id: $id) { id status } }"
GET_WORKFLOW = "query($id: ID!) { workflow(id: $id) { id status } }"


async def age(engine: AsyncEngine, ids: Sequence[str | uuid.UUID], days: float = 10) -> None:
    """Move the tasks' finish (and a workflow's, for workflow ids) `days` back."""
    async with engine.begin() as conn:
        for table in ("task", "workflow"):
            await conn.execute(
                sa.text(
                    f"UPDATE {table} SET finished_at = finished_at - make_interval(days => :d) "
                    "WHERE id = ANY(CAST(:ids AS uuid[])) AND finished_at IS NOT NULL"
                ),
                {"d": days, "ids": [str(i) for i in ids]},
            )


async def count(engine: AsyncEngine, sql: str, ids: Sequence[str | uuid.UUID]) -> int:
    async with engine.connect() as conn:
        found = await conn.scalar(sa.text(sql), {"ids": [str(i) for i in ids]})
    return int(found or 0)


async def tasks_left(engine: AsyncEngine, ids: Sequence[str | uuid.UUID]) -> int:
    return await count(
        engine, "SELECT count(*) FROM task WHERE id = ANY(CAST(:ids AS uuid[]))", ids
    )


async def events_left(engine: AsyncEngine, ids: Sequence[str | uuid.UUID]) -> int:
    return await count(
        engine, "SELECT count(*) FROM task_event WHERE task_id = ANY(CAST(:ids AS uuid[]))", ids
    )


async def cancelled(api: Stack, **options: object) -> str:
    """A task submitted (echo) and cancelled while QUEUED: finished, through the api."""
    task_id = await submit(api, {"echo": {"message": "x"}}, **options)
    await api.execute(CANCEL, id=task_id)
    return task_id


async def attach(api: Stack, task_id: str, name: str) -> None:
    data = base64.b64encode(name.encode() * 10).decode()
    await api.execute(ATTACH, id=task_id, name=name, data=data)


@pytest.fixture
async def store(settings: Settings) -> ArtifactStore:
    return make_store(settings)


async def test_old_finished_tasks_go_with_their_events_and_artifacts(
    api: Stack, engine: AsyncEngine, store: ArtifactStore
) -> None:
    old = await submit(api, {"echo": {"message": "old"}})
    await attach(api, old, "old.txt")
    await api.execute(CANCEL, id=old)
    fresh = await submit(api, {"echo": {"message": "fresh"}})
    await attach(api, fresh, "fresh.txt")
    await api.execute(CANCEL, id=fresh)
    waiting = await submit(api, {"echo": {"message": "waiting"}})  # QUEUED, never finished
    await age(engine, [old])
    async with engine.begin() as conn:  # long in the queue: unfinished all the same
        await conn.execute(
            sa.text("UPDATE task SET created_at = created_at - interval '30 days' WHERE id = :i"),
            {"i": waiting},
        )
    assert await events_left(engine, [old]) >= 3  # QUEUED, ArtifactAdded, CANCELLED
    assert len(await store_keys(store)) == 2

    done = await retention.purge(engine, store, WEEK)

    assert (done.tasks, done.workflows, done.artifacts) == (1, 0, 1)
    assert done.events == 3
    assert await tasks_left(engine, [old]) == 0
    assert await events_left(engine, [old]) == 0
    assert (await api.execute(GET, id=old))["task"] is None
    keys = await store_keys(store)
    assert len(keys) == 1 and keys[0].startswith(f"{fresh}/"), keys  # the old bytes went
    for kept in (fresh, waiting):
        assert (await api.execute(GET, id=kept))["task"]["id"] == kept
        assert await events_left(engine, [kept]) >= 1
    assert (
        await count(
            engine,
            "SELECT count(*) FROM artifact WHERE task_id = ANY(CAST(:ids AS uuid[]))",
            [fresh],
        )
        == 1
    )
    again = await retention.purge(engine, store, WEEK)
    assert again.tasks == 0 and again.batches == []


async def test_a_workflow_goes_whole_once_it_and_all_its_steps_are_old(
    api: Stack, engine: AsyncEngine, store: ArtifactStore
) -> None:
    steps = [
        {"key": "a", "task": {"echo": {"message": "a"}}},
        {"key": "b", "task": {"echo": {"message": "b"}}, "dependsOn": ["a"]},
    ]

    async def workflow(**fields: object) -> tuple[str, list[str]]:
        found = (await api.execute(SUBMIT_WORKFLOW, w={"steps": steps} | fields))["submitWorkflow"]
        return found["id"], [s["task"]["id"] for s in found["steps"]]

    # a step that ends, and one that does not depend on it and waits on, unfinished
    independent = [{"key": "a", "task": {"echo": {"message": "a"}}},
                   {"key": "c", "task": {"echo": {"message": "c"}}}]  # fmt: skip

    ended, ended_steps = await workflow()  # cancelled: finished, every step too
    await api.execute(CANCEL_WORKFLOW, id=ended)
    one_fresh, one_fresh_steps = await workflow()  # finished, but a step finished lately
    await api.execute(CANCEL_WORKFLOW, id=one_fresh)
    running, running_steps = await workflow(steps=independent, onStepFailure="CONTINUE")
    await api.execute(CANCEL, id=running_steps[0])
    assert (await api.execute(GET_WORKFLOW, id=running))["workflow"]["status"] == "RUNNING"
    await age(engine, [ended, *ended_steps, one_fresh, one_fresh_steps[0], running_steps[0]])
    plain = await cancelled(api)
    await age(engine, [plain])

    done = await retention.purge(engine, store, WEEK)

    assert (done.workflows, done.tasks) == (1, 3)  # `ended` with its 2 steps, and `plain`
    assert (await api.execute(GET_WORKFLOW, id=ended))["workflow"] is None
    assert await tasks_left(engine, ended_steps) == 0
    assert await events_left(engine, ended_steps) == 0
    assert (
        await count(
            engine,
            "SELECT count(*) FROM workflow_step WHERE task_id = ANY(CAST(:ids AS uuid[]))",
            ended_steps,
        )
        == 0
    )
    for kept, kept_steps in ((one_fresh, one_fresh_steps), (running, running_steps)):
        assert (await api.execute(GET_WORKFLOW, id=kept))["workflow"] is not None
        assert await tasks_left(engine, kept_steps) == 2  # the old step stays with them


async def test_tasks_something_live_refers_to_stay(api: Stack, engine: AsyncEngine) -> None:
    """An old parent with an unfinished child, an old child of an unfinished parent, and
    the last task a schedule fired stay; an old child of a finished parent goes."""

    async def child_of(parent: str) -> str:
        sub = Submission("echo", {"message": "child"}, 60, parent_id=uuid.UUID(parent))
        async with connections.transaction(engine) as conn:
            ((task,),), _ = await insert(conn, [("tester", [sub], T)])
        return str(task.id)

    parent = await cancelled(api)
    live_child = await child_of(parent)  # stays QUEUED
    live_parent = await submit(api, {"echo": {"message": "parent"}})
    old_child = await child_of(live_parent)
    await api.execute(CANCEL, id=old_child)
    done_parent = await cancelled(api)
    gone_child = await child_of(done_parent)
    await api.execute(CANCEL, id=gone_child)
    schedule = await create_schedule(api, everySeconds=3600, paused=True)
    ticks = [(await api.execute(TRIGGER, id=schedule["id"]))["triggerSchedule"]["id"]
             for _ in range(2)]  # fmt: skip
    for tick in ticks:
        await api.execute(CANCEL, id=tick)
    await age(engine, [parent, old_child, done_parent, gone_child, *ticks])

    done = await retention.purge(engine, store=make_store(api.settings), older_than=WEEK)

    assert await tasks_left(engine, [parent, live_child, old_child, ticks[1]]) == 4
    assert await tasks_left(engine, [done_parent, gone_child, ticks[0]]) == 0
    assert done.tasks == 3


async def test_tasks_with_a_hook_or_a_webhook_still_due_stay(
    api: Stack, engine: AsyncEngine
) -> None:
    """A hook a worker has yet to run (workers.hooks) and a completion webhook still being
    delivered keep their task, however old: their runs read it."""
    hooked, posting, done = [await cancelled(api) for _ in range(3)]
    async with engine.begin() as conn:
        await conn.execute(
            sa.text("UPDATE task SET hooks_due = ARRAY['on_failure:1'] WHERE id = :id"),
            {"id": hooked},
        )
        for task_id, status in ((posting, "PENDING"), (done, "DELIVERED")):
            await conn.execute(
                sa.text(
                    "INSERT INTO webhook_delivery (delivery_id, task_id, attempt, status, url, "
                    "due_at, task) VALUES (gen_random_uuid(), :id, 1, :status, "
                    "'https://example.com/hook', clock_timestamp(), '{}'::jsonb)"
                ),
                {"id": task_id, "status": status},
            )
    await age(engine, [hooked, posting, done])
    result = await retention.purge(engine, store=make_store(api.settings), older_than=WEEK)
    assert await tasks_left(engine, [hooked, posting]) == 2
    assert await tasks_left(engine, [done]) == 0 and result.tasks == 1


async def old_finished(engine: AsyncEngine, n: int, owner: str = "bulk") -> list[uuid.UUID]:
    """`n` tasks (each with its QUEUED event) that SUCCEEDED ten days ago: bulk rows for the
    tests of batches, written in one statement each."""
    subs = [Submission("echo", {"message": str(i)}, 60) for i in range(n)]
    async with connections.transaction(engine) as conn:
        (tasks,), _ = await insert(conn, [(owner, subs, T)])
        await conn.execute(
            "UPDATE task SET status = 'SUCCEEDED', started_at = created_at, "
            "finished_at = clock_timestamp() - interval '10 days' - make_interval(secs => n) "
            "FROM unnest($1::uuid[]) WITH ORDINALITY AS u(id, n) WHERE task.id = u.id",
            [t.id for t in tasks],
        )
    return [t.id for t in tasks]


async def test_a_purge_goes_in_bounded_batches(engine: AsyncEngine, settings: Settings) -> None:
    ids = await old_finished(engine, 2500)
    done = await retention.purge(engine, make_store(settings), WEEK, batch=1000, pause=0)
    assert done.batches == [1000, 1000, 500]
    assert done.tasks == 2500 and done.events == 2500
    assert await tasks_left(engine, ids) == 0


async def test_submissions_go_on_while_a_purge_runs(
    api: Stack, engine: AsyncEngine, settings: Settings
) -> None:
    old = await old_finished(engine, 3000)
    purging = asyncio.create_task(
        retention.purge(engine, make_store(settings), WEEK, batch=200, pause=0)
    )
    new: list[str] = []
    while not purging.done() and len(new) < 400:
        new += await asyncio.gather(*(submit(api, {"echo": {"message": "n"}}) for _ in range(4)))
    done = await purging
    assert len(done.batches) == 15 and max(done.batches) == 200
    assert await tasks_left(engine, old) == 0
    assert len(new) >= 4 and await tasks_left(engine, new) == len(new)


async def test_the_worker_purges_by_task_retention_days(
    api: Stack, engine: AsyncEngine, settings: Settings
) -> None:
    """Every worker's retention loop (one at a time) runs the purge when
    TASK_RETENTION_DAYS is set; unset, it keeps everything."""
    old = await cancelled(api)
    await age(engine, [old], days=3)
    async with run_worker(settings):  # TASK_RETENTION_DAYS unset: keep forever
        await asyncio.sleep(1.0)
    assert await tasks_left(engine, [old]) == 1
    client = Redis.from_url(settings.require_redis_url())
    await client.delete("taskrunner:retention")  # the round's lock of the worker above
    await client.aclose()
    two_days = settings.model_copy(update={"task_retention_days": 2})
    async with run_worker(two_days):
        await wait_for(engine, f"SELECT count(*) FROM task WHERE id = '{old}'", 0, within=10)
