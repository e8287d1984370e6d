"""Alembic environment: runs migrations over asyncpg. The URL comes from the caller
(`taskrunner migrate`) as `config.attributes["database_url"]`, or from DATABASE_URL (the
alembic CLI, configured by alembic.ini)."""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import SQLModel

import taskrunner.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from taskrunner.config import get_settings
from taskrunner.db import async_url

target_metadata = SQLModel.metadata

if context.config.config_file_name is not None:  # the alembic CLI (alembic.ini): its logging
    fileConfig(context.config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    url = context.config.attributes.get("database_url")
    return str(url) if url else async_url(get_settings().require_database_url())


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_async_engine(_url())
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_async())
