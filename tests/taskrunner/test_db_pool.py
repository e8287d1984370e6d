"""DB_POOL_SIZE and DB_MAX_OVERFLOW (seed 004) size the pool of a real api and a real worker,
each says so in its log at start, and tasks run through pools of 3 + 1."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from api.app import create_app
from taskrunner.config import Settings
from tests.support.servers import run_api, run_worker
from tests.support.stack import Stack
from tests.support.tasks import ended, submit
from tests.support.waiting import eventually

STATUS = "query($id: ID!) { task(id: $id) { status } }"


def _pool(engine: Any) -> tuple[int, int]:
    return engine.pool.size(), engine.pool._max_overflow


async def test_the_api_and_the_worker_size_their_pools(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    sized = settings.model_copy(update={"db_pool_size": 3, "db_max_overflow": 1})
    caplog.set_level(logging.INFO, logger="taskrunner.db")
    app = create_app(sized)
    async with run_api(sized, app) as url, run_worker(sized) as worker:

        async def started() -> bool:
            """the worker has run its startup"""
            return "pulse" in worker.ctx

        await eventually(started, within=30)
        assert _pool(app.state.services.engine) == (3, 1)
        assert _pool(worker.ctx["engine"]) == (3, 1)
        # and tasks run through pools that small
        stack = await Stack.keyed(url, sized)
        ids = [await submit(stack, {"echo": {"message": str(i)}}) for i in range(20)]
        for task_id in ids:
            done = await ended(stack, STATUS, task_id)
            assert done["status"] == "SUCCEEDED", done
    said = [r.getMessage() for r in caplog.records if r.name == "taskrunner.db"]
    for process in ("api", "worker"):
        line = f"database pool of the {process}: 3 connections (DB_POOL_SIZE), up to 1 more"
        assert any(m.startswith(line) for m in said), said


async def test_the_overflow_defaults_to_a_quarter_of_the_pool(settings: Settings) -> None:
    sized = settings.model_copy(update={"db_pool_size": 40})
    app = create_app(sized)
    async with run_api(sized, app):
        assert _pool(app.state.services.engine) == (40, 10)
