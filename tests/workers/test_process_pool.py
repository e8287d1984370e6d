"""The worker's pool of children for process tasks, driven directly (workers/processes.py),
with real child processes: a child killed for its memory budget ends its task
LIMIT_EXCEEDED (never retried), never CRASHED, however the kill and the closed pipe race."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from arq.connections import ArqRedis
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner.artifacts.storage import make_store
from taskrunner.config import Settings
from workers.processes import ProcessPool, ProcessTaskError
from workers.task_context import TaskContext

HOG = """
import time

from pydantic import BaseModel


class Input(BaseModel):
    mb: int


def run(ctx, input):
    block = bytearray(input.mb * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(30)
"""
ROUNDS = 12


class Hog(BaseModel):
    mb: int


@pytest.fixture
async def hog_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ProcessPool]:
    (tmp_path / "pool_hog.py").write_text(HOG)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    pool = ProcessPool(
        size=1, kill_grace_seconds=1.0, memory_budget_mb=20, memory_check_seconds=0.02
    )
    try:
        yield pool
    finally:
        await pool.aclose()


async def test_a_child_over_its_memory_budget_always_ends_limit_exceeded(
    hog_pool: ProcessPool, settings: Settings, engine: AsyncEngine, pool: ArqRedis
) -> None:
    codes = []
    for attempt in range(1, ROUNDS + 1):
        tctx = TaskContext(uuid.uuid4(), attempt, settings, engine, pool, make_store(settings))
        with pytest.raises(ProcessTaskError) as raised:
            await hog_pool.run(tctx, "pool_hog", Hog(mb=60))
        codes.append((raised.value.code, raised.value.retryable))
    # each kill reads as the budget's, whether the watch or the closed pipe is seen first
    assert codes == [("LIMIT_EXCEEDED", False)] * ROUNDS
