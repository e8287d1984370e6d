"""The migrations build exactly the tables the models describe."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import SQLModel

import taskrunner.models  # noqa: F401


async def test_migrated_database_matches_the_models(engine: AsyncEngine) -> None:
    def diff(conn: Connection) -> list[Any]:
        return list(compare_metadata(MigrationContext.configure(conn), SQLModel.metadata))

    async with engine.connect() as conn:
        assert await conn.run_sync(diff) == []


def test_the_task_record_has_one_attribute_per_column() -> None:
    """`TaskRecord` (rows as read) and the `task` table must not drift apart."""
    from dataclasses import fields

    from taskrunner.models import TaskRecord, task_table

    assert [f.name for f in fields(TaskRecord)] == [c.name for c in task_table.columns]
