"""IDEMPOTENCY_KEY_TTL_HOURS over real HTTP: within it a key returns the first task (or
workflow); after it, the next submission with the key makes a new one and takes the key
over, exactly one however many arrive at once. Ages are made by moving created_at back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner.config import Settings
from tests.support.servers import run_api
from tests.support.stack import Stack

SUBMIT = """
mutation($key: String!, $m: String!) {
  submitTask(task: {echo: {message: $m}}, options: {idempotencyKey: $key}) { id input }
}"""
SUBMIT_MANY = "mutation($t: [TaskSubmissionInput!]!) { submitTasks(tasks: $t) { id } }"
GET = "query($id: ID!) { task(id: $id) { id idempotencyKey input } }"
SUBMIT_WORKFLOW = """
mutation($key: String!) {
  submitWorkflow(
    workflow: {idempotencyKey: $key, steps: [{key: "a", task: {echo: {message: "a"}}}]}
  ) { id idempotencyKey }
}"""


@pytest.fixture
async def hour_api(settings: Settings) -> AsyncIterator[Stack]:
    """The api (no worker) with IDEMPOTENCY_KEY_TTL_HOURS=1."""
    hour = settings.model_copy(update={"idempotency_key_ttl_hours": 1})
    async with run_api(hour) as url:
        yield await Stack.keyed(url, hour)


async def backdate(engine: AsyncEngine, table: str, row_id: str, hours: float) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                f"UPDATE {table} SET created_at = created_at - make_interval(hours => :h) "
                "WHERE id = CAST(:id AS uuid)"
            ),
            {"h": hours, "id": row_id},
        )


async def count(engine: AsyncEngine, sql: str) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(sa.text(sql)) or 0)


async def submitted(api: Stack, key: str, message: str) -> dict[str, Any]:
    return dict((await api.execute(SUBMIT, key=key, m=message))["submitTask"])


async def test_an_expired_key_makes_a_new_task_and_a_fresh_one_the_first(
    hour_api: Stack, engine: AsyncEngine
) -> None:
    first = await submitted(hour_api, "k", "first")
    assert (await submitted(hour_api, "k", "again"))["id"] == first["id"]  # fresh
    await backdate(engine, "task", first["id"], 2)
    second = await submitted(hour_api, "k", "second")
    assert second["id"] != first["id"] and second["input"] == {"message": "second"}
    assert (await submitted(hour_api, "k", "third"))["id"] == second["id"]  # fresh again
    old = (await hour_api.execute(GET, id=first["id"]))["task"]
    assert old["input"] == {"message": "first"} and old["idempotencyKey"] is None  # taken over
    new = (await hour_api.execute(GET, id=second["id"]))["task"]
    assert new["idempotencyKey"] == "k"
    assert await count(engine, "SELECT count(*) FROM task") == 2
    assert await count(engine, "SELECT count(*) FROM task_event") == 2  # one QUEUED each

    await backdate(engine, "task", second["id"], 2)  # a batch naming the expired key twice
    batch = [
        {"task": {"echo": {"message": "b"}}, "options": {"idempotencyKey": "k"}},
        {"task": {"echo": {"message": "c"}}},
        {"task": {"echo": {"message": "d"}}, "options": {"idempotencyKey": "k"}},
    ]
    ids = [t["id"] for t in (await hour_api.execute(SUBMIT_MANY, t=batch))["submitTasks"]]
    assert ids[0] == ids[2] and len(set(ids)) == 2 and second["id"] not in ids
    assert await count(engine, "SELECT count(*) FROM task") == 4  # k once more, and c


async def test_concurrent_submissions_of_an_expired_key_make_one_task(
    hour_api: Stack, engine: AsyncEngine
) -> None:
    holder = (await submitted(hour_api, "race", "0"))["id"]
    for round_ in range(3):
        await backdate(engine, "task", holder, 2)
        found = await asyncio.gather(
            *(submitted(hour_api, "race", f"{round_}-{i}") for i in range(8))
        )
        ids = {t["id"] for t in found}
        assert len(ids) == 1 and holder not in ids, ids
        (holder,) = ids
        assert await count(engine, "SELECT count(*) FROM task") == 2 + round_


async def test_without_a_ttl_a_key_lasts_as_long_as_its_task(
    api: Stack, engine: AsyncEngine
) -> None:
    first = await submitted(api, "k", "first")
    await backdate(engine, "task", first["id"], 24 * 1000)
    assert (await submitted(api, "k", "later"))["id"] == first["id"]


async def test_an_expired_workflow_key_makes_a_new_workflow(
    hour_api: Stack, engine: AsyncEngine
) -> None:
    first = (await hour_api.execute(SUBMIT_WORKFLOW, key="w"))["submitWorkflow"]
    assert (await hour_api.execute(SUBMIT_WORKFLOW, key="w"))["submitWorkflow"] == first
    await backdate(engine, "workflow", first["id"], 2)
    found = await asyncio.gather(*(hour_api.execute(SUBMIT_WORKFLOW, key="w") for _ in range(4)))
    ids = {f["submitWorkflow"]["id"] for f in found}
    assert len(ids) == 1 and first["id"] not in ids
    assert await count(engine, "SELECT count(*) FROM workflow") == 2
    assert await count(engine, "SELECT count(*) FROM task") == 2  # one step each
