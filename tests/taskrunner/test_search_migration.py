"""Migration 0015: search inputs stored in the old shape (`sources` were Brave's verticals)
become the new one (`sources: [brave]`, the verticals in `verticals`, cleaned up as the old
code took them), in tasks, schedules and workflow steps, so they still run and retry; any
other input is left alone; the downgrade gives the old shape back (to every new-shape
input: the old code knows no other)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
from alembic import command
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner.config import Settings
from taskrunner.db import alembic_config, migrate
from workers.tasks import search

OLD = {"query": "q", "sources": ["news", "web"], "recency_days": 7, "max_results": None}
NEW = {**OLD, "sources": ["brave"], "verticals": ["news", "web"]}
# a step with fields still to bind is stored as typed; the old code took it
TYPED = {"query": "q", "sources": ["News", " web ", "news"]}
TYPED_NEW = {"query": "q", "sources": ["brave"], "verticals": ["news", "web"]}
LEFT_ALONE: list[dict[str, Any]] = [
    {"query": "q", "sources": ["brave"], "verticals": ["web"]},  # already new
    {"query": "q", "sources": ["web", "brave"]},  # mixed: refused as before, with its hint
    {"query": "q", "sources": []},
]


async def _insert(engine: AsyncEngine, type_: str, inputs: list[dict[str, Any]]) -> list[str]:
    """A task, a schedule and a workflow step (same id) per input."""
    ids = [str(uuid.uuid4()) for _ in inputs]
    workflow = str(uuid.uuid4())
    async with engine.begin() as conn:
        await conn.exec_driver_sql(
            "INSERT INTO workflow (id, owner, step_count) VALUES ($1::uuid, 'o', $2)",
            (workflow, len(inputs)),
        )
        for position, (id_, value) in enumerate(zip(ids, inputs, strict=True)):
            await conn.exec_driver_sql(
                "INSERT INTO task (id, owner, type, status, input, timeout_seconds) "
                "VALUES ($1, 'o', $2, 'QUEUED', $3::jsonb, 60)",
                (id_, type_, orjson.dumps(value).decode()),
            )
            await conn.exec_driver_sql(
                "INSERT INTO workflow_step (task_id, workflow_id, key, position, input)"
                " VALUES ($1::uuid, $2::uuid, $1::text, $3, $4::jsonb)",
                (id_, workflow, position, orjson.dumps(value).decode()),
            )
            await conn.exec_driver_sql(
                "INSERT INTO schedule (id, owner, name, every_seconds, task_type, task_input,"
                " options) VALUES ($1::uuid, 'o', $1::text, 60, $2, $3::jsonb, '{}'::jsonb)",
                (id_, type_, orjson.dumps(value).decode()),
            )
    return ids


async def _inputs(engine: AsyncEngine, ids: list[str]) -> list[tuple[Any, Any, Any]]:
    """(the task's, the schedule's, the step's) input, for each id."""
    async with engine.connect() as conn:
        rows = []
        for id_ in ids:
            task = await conn.exec_driver_sql("SELECT input FROM task WHERE id = $1", (id_,))
            schedule = await conn.exec_driver_sql(
                "SELECT task_input FROM schedule WHERE id = $1", (id_,)
            )
            step = await conn.exec_driver_sql(
                "SELECT input FROM workflow_step WHERE task_id = $1", (id_,)
            )
            rows.append((task.scalar_one(), schedule.scalar_one(), step.scalar_one()))
    return rows


async def test_old_search_inputs_take_the_new_shape(engine: AsyncEngine, database_url: str) -> None:
    await asyncio.to_thread(command.downgrade, alembic_config(database_url), "0014")
    old = await _insert(engine, "search", [OLD, TYPED])
    alone = await _insert(engine, "search", LEFT_ALONE)
    other = await _insert(engine, "echo", [OLD])  # another type's `sources` is its own

    await asyncio.to_thread(migrate, database_url)

    assert await _inputs(engine, old) == [(NEW, NEW, NEW), (TYPED_NEW, TYPED_NEW, TYPED_NEW)]
    assert await _inputs(engine, alone) == [(v, v, v) for v in LEFT_ALONE]
    assert await _inputs(engine, other) == [(OLD, OLD, OLD)]
    # and the search type takes it as it is, under the default allowlist
    settings = Settings(_env_file=None)
    for value in (NEW, TYPED_NEW):
        checked = search.Input.model_validate(value, context={"settings": settings})
        assert (checked.sources, checked.verticals) == (["brave"], ["news", "web"])

    # the downgrade turns every new-shape input back, which the old code takes
    await asyncio.to_thread(command.downgrade, alembic_config(database_url), "0014")
    typed_old = {"query": "q", "sources": ["news", "web"]}
    assert await _inputs(engine, old) == [(OLD, OLD, OLD), (typed_old, typed_old, typed_old)]
    was_new = {"query": "q", "sources": ["web"]}
    assert await _inputs(engine, alone) == [(v, v, v) for v in [was_new, *LEFT_ALONE[1:]]]
