"""Servers a test runs in its own event loop: the session's embedded PostgreSQL and Redis
(`Servers`, the `servers` fixture's type), a real uvicorn serving an app, and a real arq
worker."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette

from api.app import create_app, uvicorn_options
from taskrunner.config import Settings
from taskrunner.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from workers.settings import TaskWorker, task_worker


@dataclass
class Servers:
    postgres: EmbeddedPostgres
    redis: EmbeddedRedis


@contextlib.asynccontextmanager
async def serve(app: Any, port: int | None = None, **config: Any) -> AsyncIterator[str]:
    """A real uvicorn serving `app` on a loopback port (a free one unless given), started
    within 15 s; yields its base URL. `config`: more uvicorn.Config options (TLS, logs)."""
    port = port or free_port()
    options: dict[str, Any] = {"host": "127.0.0.1", "port": port, "log_level": "warning"}
    server = uvicorn.Server(uvicorn.Config(app, **{**options, **config}))
    serving = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(15):
            while not server.started:
                if serving.done():
                    serving.result()
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 15)


@contextlib.asynccontextmanager
async def run_api(settings: Settings, app: Starlette | None = None) -> AsyncIterator[str]:
    """A real uvicorn serving the app on a free loopback port; yields its base URL."""
    async with serve(app or create_app(settings), **uvicorn_options(settings)) as url:
        yield url


@contextlib.asynccontextmanager
async def run_worker(settings: Settings, **overrides: Any) -> AsyncIterator[TaskWorker]:
    """A real arq worker with our settings, in this event loop."""
    worker = task_worker(settings, handle_signals=False, **overrides)
    running = asyncio.create_task(worker.async_run())
    try:
        yield worker
    finally:
        # What SIGTERM does, in-process: cancel the jobs still running, let them hand their
        # tasks back, then let arq close its pool and run on_shutdown. arq's close() would
        # re-raise a cancelled job's CancelledError before closing anything, so the jobs
        # are awaited (and forgotten) first.
        worker.handle_sig(signal.SIGUSR1)
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
        worker.tasks.clear()
        await worker.close()
        with contextlib.suppress(asyncio.CancelledError):
            await running
