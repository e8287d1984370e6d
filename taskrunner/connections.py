"""Plain asyncpg connections of the engine's pool, for the write path's statements: no
SQLAlchemy work per statement, SQLAlchemy's codecs kept, traced while tracing is on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import tracing
from taskrunner.db import unavailable


@contextlib.asynccontextmanager
async def connection(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """One of the engine's pooled connections, used through asyncpg (a statement run on
    it outside `transaction` commits on its own).

    The connection carries SQLAlchemy's codecs: a JSONB parameter is passed as JSON text
    (`changes.json_text`), a JSONB column reads as Python values. Its statements are trace spans
    while tracing is on. A connection that broke or whose statement was interrupted is
    invalidated rather than returned to the pool, as is one that failed because PostgreSQL
    went away (`db.unavailable`: it may say goodbye before it closes)."""
    async with engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        traced = tracing.enabled()
        if traced:
            raw.add_query_logger(tracing.query_span)
        try:
            yield raw
        except BaseException as exc:
            if (
                raw.is_closed()
                or isinstance(exc, asyncio.CancelledError | OSError)
                or unavailable(exc)
            ):
                await asyncio.shield(conn.invalidate())
            raise
        finally:
            if traced:
                raw.remove_query_logger(tracing.query_span)


@contextlib.asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """A transaction on a `connection`."""
    async with connection(engine) as raw, raw.transaction():
        yield raw
