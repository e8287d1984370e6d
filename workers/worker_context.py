"""The arq `ctx` of a worker and what it holds: its connections, its settings, and the
attempts it runs.

`workers.settings` fills it in at start-up; the runner and the background loops read it.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypedDict

from arq import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import heartbeats
from taskrunner.artifacts.storage import ArtifactStore
from taskrunner.config import Settings
from workers.memory import MemoryWatchdog
from workers.processes import ProcessPool


@dataclass(frozen=True)
class Running:
    """An attempt this worker runs: its number and the asyncio task of its body."""

    attempt: int
    body: asyncio.Task[Any]


class WorkerContext(TypedDict):
    """arq's `ctx` as this worker fills it in `on_startup`."""

    redis: ArqRedis  # arq's own pool
    settings: Settings
    queues: list[str]  # the named queues it serves
    engine: AsyncEngine
    worker_id: str
    started_at: datetime
    # task id -> its attempt here, from its start until its final status is written
    running: dict[uuid.UUID, Running]
    cancel_requests: dict[tuple[uuid.UUID, int], float]  # (task, attempt) asked early -> when
    store: ArtifactStore
    pulse: heartbeats.Pulse  # whether this worker's heartbeats are written
    memory: MemoryWatchdog  # TASK_MAX_MEMORY_MB
    processes: ProcessPool  # the children of process tasks (WORKER_PROCESSES)


def held(ctx: WorkerContext) -> list[uuid.UUID]:
    """The tasks whose attempt this worker has not finished: its body runs, or its last
    writes are pending. The heartbeat lists them: none of them is an orphan."""
    return list(ctx["running"])
