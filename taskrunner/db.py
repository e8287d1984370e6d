"""The PostgreSQL engine and migrations. Built by the process that uses them, never at import."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def async_url(database_url: str) -> str:
    """`postgresql://...` as SQLAlchemy's asyncpg URL (unix-socket `?host=` URLs included)."""
    url = make_url(database_url)
    return url.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def create_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(
        async_url(database_url),
        pool_size=pool_size,
        max_overflow=pool_size * 2,
        pool_pre_ping=True,
    )


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


async def migrate_async(database_url: str, revision: str = "head") -> None:
    await asyncio.to_thread(migrate, database_url, revision)
