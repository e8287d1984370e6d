"""Real servers for the suite: one embedded PostgreSQL and one Redis per run, a fresh
database per test (copied from a migrated template), and on demand a real uvicorn
serving the api plus a real arq worker, both in the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from gql import Client, GraphQLRequest
from gql.transport.httpx import HTTPXAsyncTransport
from gql.transport.websockets import WebsocketsTransport
from moto.server import ThreadedMotoServer
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette

from api.app import create_app, uvicorn_options
from taskrunner import keys
from taskrunner.config import Settings, load_settings
from taskrunner.db import create_engine, migrate
from taskrunner.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from workers.settings import TaskWorker, worker_options

TEMPLATE = "taskrunner_template"
_numbers = itertools.count(1)


@dataclass
class Servers:
    postgres: EmbeddedPostgres
    redis: EmbeddedRedis


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3-compatible server on loopback (moto's; it does not check signatures),
    for every test of the S3 store."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    root = tmp_path_factory.mktemp("servers")
    postgres = EmbeddedPostgres(root / "postgres")
    redis = EmbeddedRedis(root / "redis")
    postgres.start()
    redis.start()
    try:
        postgres.create_database(TEMPLATE)
        migrate(postgres.url(TEMPLATE))
        yield Servers(postgres, redis)
    finally:
        redis.stop()
        postgres.stop()


@pytest.fixture
def database_url(servers: Servers) -> str:
    """A fresh, migrated database for this test."""
    name = f"test_{next(_numbers)}"
    servers.postgres.create_database(name, template=TEMPLATE)
    return servers.postgres.url(name)


@pytest.fixture
async def redis_url(servers: Servers) -> AsyncIterator[str]:
    client = Redis.from_url(servers.redis.url)
    await client.flushall()
    await client.aclose()
    yield servers.redis.url


@pytest.fixture
def settings(database_url: str, redis_url: str, tmp_path: Path) -> Settings:
    return load_settings(
        database_url=database_url,
        redis_url=redis_url,
        data_dir=tmp_path / "data",
        artifact_signing_key="test-signing-key",
        **FAST,
        _env_file=None,
    )


# Short intervals so that recovery happens within a test's patience.
FAST: dict[str, Any] = {
    "stream_quiet_seconds": 1.0,
    "worker_poll_delay_seconds": 0.02,
    "task_max_runtime_seconds": 60,
    "heartbeat_interval_seconds": 0.4,
    "scheduler_interval_seconds": 0.1,
    "reconcile_interval_seconds": 0.5,
    "worker_shutdown_grace_seconds": 2,
    "auth_recheck_seconds": 0.2,
    "tasks_per_minute": 0,  # tests that want the limit set it
    "worker_metrics_port": 0,  # many workers share a host; tests that scrape set a port
}


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment for a subprocess (api or worker) using the test's servers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COV_CORE")}
    env.update({k.upper(): str(v) for k, v in FAST.items()})
    env["DATABASE_URL"] = settings.require_database_url()
    env["REDIS_URL"] = settings.require_redis_url()
    env["LOG_LEVEL"] = "WARNING"
    env["DATA_DIR"] = str(settings.data_dir)
    if settings.artifact_signing_key is not None:
        env["ARTIFACT_SIGNING_KEY"] = settings.artifact_signing_key.get_secret_value()
    env.update(extra)
    return env


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings.require_database_url(), pool_size=2)
    yield engine
    await engine.dispose()


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
    options = {**worker_options(settings), "handle_signals": False, **overrides}
    worker = TaskWorker(**options, idle_poll_seconds=settings.worker_idle_poll_seconds)
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


async def make_key(
    settings: Settings, owner: str = "tester", *, name: str | None = None, admin: bool = False
) -> str:
    """A new API key of `owner` in the test's database."""
    engine = create_engine(settings.require_database_url(), pool_size=1)
    name = name or f"{owner}-{next(_numbers)}"
    try:
        _, secret = await keys.create(engine, name=name, owner=owner, admin=admin)
    finally:
        await engine.dispose()
    return secret


@dataclass
class Stack:
    url: str
    settings: Settings
    key: str | None = None  # sent as `Authorization: Bearer <key>` (HTTP and connection_init)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    @classmethod
    async def keyed(cls, url: str, settings: Settings, owner: str = "tester") -> Stack:
        """A stack at `url` called with a new key of `owner`."""
        return cls(url, settings, await make_key(settings, owner))

    def as_key(self, key: str | None) -> Stack:
        """The same stack, called with another key (None: none)."""
        return dataclasses.replace(self, key=key)

    @property
    def graphql_url(self) -> str:
        return f"{self.url}/graphql"

    @property
    def ws_url(self) -> str:
        return self.graphql_url.replace("http://", "ws://")

    async def execute(self, query: str, **variables: Any) -> dict[str, Any]:
        """One GraphQL operation over HTTP with the gql client."""
        transport = HTTPXAsyncTransport(url=self.graphql_url, timeout=30, headers=self.headers)
        async with Client(transport=transport) as session:
            result: dict[str, Any] = await session.execute(
                GraphQLRequest(query, variable_values=variables or None)
            )
            return result

    def ws_client(self) -> Client:
        transport = WebsocketsTransport(
            url=self.ws_url,
            subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
            init_payload=dict(self.headers),
        )
        return Client(transport=transport)

    async def subscribe(
        self, query: str, *, limit: int | None = None, within: float = 20, **variables: Any
    ) -> list[dict[str, Any]]:
        """Collect a subscription's results until it completes (or `limit` arrive)."""
        got: list[dict[str, Any]] = []

        async def collect() -> None:
            async with self.ws_client() as session:
                agen = session.subscribe(GraphQLRequest(query, variable_values=variables or None))
                try:
                    async for item in agen:
                        got.append(item)
                        if limit is not None and len(got) >= limit:
                            break
                finally:
                    await agen.aclose()

        await asyncio.wait_for(collect(), within)
        return got


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Stack]:
    """The api alone (no worker): tasks stay QUEUED."""
    async with run_api(settings) as url:
        yield await Stack.keyed(url, settings)


@pytest.fixture
async def stack(settings: Settings) -> AsyncIterator[Stack]:
    """The api and one worker."""
    async with run_api(settings) as url, run_worker(settings):
        yield await Stack.keyed(url, settings)


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


async def eventually(
    check: Callable[[], Awaitable[bool]], within: float, step: float = 0.05
) -> None:
    """Poll `check` (state held elsewhere: Redis, a server) until true, or fail."""
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not true within {within}s: {check.__doc__ or check}")
        await asyncio.sleep(step)


@contextlib.asynccontextmanager
async def api_process(settings: Settings, **env: str) -> AsyncIterator[str]:
    """`taskrunner api` in its own process on a free port; yields its base URL once ready."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "taskrunner",
        "api",
        cwd=repo_root(),
        env=process_env(settings, PORT=str(port), **env),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url) as client, asyncio.timeout(30):
            while True:
                if proc.returncode is not None:
                    raise AssertionError(f"the api exited with {proc.returncode} at start")
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        yield url
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
