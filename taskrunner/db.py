"""The PostgreSQL engine and migrations. Built by the process that uses them, never at import."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from taskrunner.config import Settings
from taskrunner.errors import Unavailable

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
T = TypeVar("T")
log = logging.getLogger(__name__)

# What clients are told to wait when PostgreSQL cannot be reached: about a fast restart.
RETRY_AFTER_SECONDS = 2
UNAVAILABLE_MESSAGE = (
    f"the database is unavailable right now; retry in {RETRY_AFTER_SECONDS}s (a submission "
    "retried with the same idempotencyKey never makes a second task)"
)
# The server is away, starting, stopping, full, or the connection to it is gone. (Only
# connection failures: a statement the server refused is not one, nor is a cancelled one.)
LOST = (
    asyncpg.PostgresConnectionError,  # class 08, and ConnectionDoesNotExistError
    asyncpg.CannotConnectNowError,  # 57P03: starting up, shutting down
    asyncpg.AdminShutdownError,  # 57P01: the session was terminated (pg_ctl stop -m fast)
    asyncpg.CrashShutdownError,  # 57P02
    asyncpg.TooManyConnectionsError,  # 53300
    ConnectionError,  # refused, reset, broken pipe
)
CLOSED = ("connection is closed", "connection was closed")  # asyncpg.InterfaceError texts
# asyncpg.InternalClientError for a statement refused before it was sent, because the
# connection is in state 2 (ERROR_CONSUME): an error arrived while no statement ran, which
# is the server's goodbye (FATAL, "terminating connection") before the socket closes.
GOODBYE = "another operation (2) is in progress"


def unavailable(exc: BaseException | None) -> bool:
    """Whether `exc`, or what it wraps, says PostgreSQL could not be reached or the
    connection to it was lost (as opposed to a statement that failed)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (Unavailable, *LOST)):
            return True
        if isinstance(exc, asyncpg.InterfaceError) and any(c in str(exc) for c in CLOSED):
            return True
        if isinstance(exc, asyncpg.InternalClientError) and GOODBYE in str(exc):
            return True
        if isinstance(exc, sa_exc.TimeoutError):  # no pooled connection came free in time
            return True
        if isinstance(exc, sa_exc.DBAPIError):
            if exc.connection_invalidated:
                return True
            exc = exc.orig if exc.orig is not None else exc.__cause__
            continue
        exc = exc.__cause__
    return False


def unavailable_error() -> Unavailable:
    """What a caller is answered while PostgreSQL cannot be reached (no SQL, no host, no
    exception text: the server's log has those)."""
    return Unavailable(UNAVAILABLE_MESSAGE, retry_after=RETRY_AFTER_SECONDS)


async def retry_unavailable(
    fn: Callable[[], Awaitable[T]], *, within: float, what: str, first_delay: float = 0.1
) -> T:
    """`fn()`, run again with backoff (doubling up to 2 s, jittered) while it fails because
    PostgreSQL cannot be reached, for up to `within` seconds; then, as on any other error,
    the error is raised. Only for work that is safe to repeat: a refused change is refused
    again, a committed one is not applied twice (the journal's conditions)."""
    deadline = time.monotonic() + within
    delay, tries = first_delay, 0
    while True:
        try:
            return await fn()
        except Exception as exc:
            wait = delay * random.uniform(0.5, 1.0)
            if not unavailable(exc) or time.monotonic() + wait > deadline:
                raise
            tries += 1
            log.log(
                logging.WARNING if tries == 1 else logging.INFO,
                "%s: PostgreSQL is unavailable (%s); trying again in %.2fs",
                what,
                type(exc).__name__,
                wait,
            )
            await asyncio.sleep(wait)
            delay = min(delay * 2, 2.0)


def async_url(database_url: str) -> str:
    """`postgresql://...` as SQLAlchemy's asyncpg URL (unix-socket `?host=` URLs included)."""
    url = make_url(database_url)
    return url.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def engine_for(settings: Settings, process: str) -> AsyncEngine:
    """The engine of an api or worker process: its pool sized by DB_POOL_SIZE and
    DB_MAX_OVERFLOW, said in the log at start."""
    engine = create_engine(
        settings.require_database_url(),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
    )
    pool: Any = engine.pool
    log.info(
        "database pool of the %s: %d connections (DB_POOL_SIZE), up to %d more in a burst "
        "(DB_MAX_OVERFLOW)",
        process,
        pool.size(),
        pool._max_overflow,
    )
    return engine


def create_engine(
    database_url: str, *, pool_size: int = 20, max_overflow: int | None = None
) -> AsyncEngine:
    # A pool as large as the concurrency it serves, with little overflow: overflow
    # connections are closed on return, and opening one is costly. No pre-ping
    # (a round trip per checkout); connections are recycled instead, and a connection
    # the server closed (a restart) is replaced at checkout, which costs nothing: asyncpg
    # already knows it is closed (`_replace_closed`). A connection PostgreSQL refuses
    # is `Unavailable` (`_connect`).
    engine = create_async_engine(
        async_url(database_url),
        pool_size=pool_size,
        max_overflow=max(2, pool_size // 4) if max_overflow is None else max_overflow,
        pool_recycle=1800,
    )
    event.listen(engine.sync_engine, "checkout", _replace_closed)
    event.listen(engine.sync_engine, "do_connect", _connect)
    return engine


def _replace_closed(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """A pooled connection the server closed (a restart, an idle timeout) is replaced
    before anything is sent on it: asyncpg marks it closed when the server's goodbye or
    the end of the socket arrives, so this is a pre-ping without the round trip. (One that
    dies while a statement runs still fails that statement: it may have run.)"""
    driver = getattr(dbapi_connection, "driver_connection", None)
    if driver is not None and driver.is_closed():
        raise sa_exc.DisconnectionError("the server closed this pooled connection")


def _connect(dialect: Any, record: Any, cargs: Any, cparams: Any) -> Any:
    """Open a connection as SQLAlchemy would; PostgreSQL unreachable (no socket, refused,
    starting up or shutting down, out of connections, timed out) is `Unavailable`."""
    try:
        return dialect.connect(*cargs, **cparams)
    except Exception as exc:  # asyncpg's, or as the driver adapter translated it
        if isinstance(exc, OSError | TimeoutError) or unavailable(exc):
            log.debug("cannot connect to PostgreSQL: %r", exc)
            raise unavailable_error() from exc
        raise


def alembic_config(database_url: str) -> Config:
    """Alembic config pointing at our migrations; the URL travels as an attribute
    (an `.ini` value would need `%` escaped, and socket URLs contain `%2F`)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = async_url(database_url)
    return config


def migrate(database_url: str, revision: str = "head") -> None:
    """Apply migrations up to `revision` (blocking; call from a thread inside an event loop)."""
    command.upgrade(alembic_config(database_url), revision)


@functools.lru_cache(maxsize=1)
def head_revision() -> str | None:
    """The newest migration in MIGRATIONS_DIR."""
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config).get_current_head()


async def migrate_async(database_url: str, revision: str = "head") -> None:
    await asyncio.to_thread(migrate, database_url, revision)
