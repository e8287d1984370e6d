"""The alembic CLI works from the project root as seeds 001 and 002 use it (alembic.ini,
DATABASE_URL): `upgrade head`, `downgrade -1`, `revision --autogenerate`; and every
migration's downgrade runs: head, down to base (no table of ours left), head again."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

from alembic import command
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner.db import alembic_config, head_revision, migrate
from tests.support.environment import repo_root

ALEMBIC = str(Path(sys.executable).parent / "alembic")


def alembic(database_url: str, *args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [ALEMBIC, *args],
        cwd=cwd or repo_root(),
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"alembic {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


async def revision_of(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return (await conn.exec_driver_sql("SELECT version_num FROM alembic_version")).scalar()


async def tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        rows = await conn.exec_driver_sql(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        )
        return {row[0] for row in rows}


async def test_upgrade_and_downgrade_from_the_project_root(
    engine: AsyncEngine, database_url: str
) -> None:
    head = head_revision()
    assert head is not None
    out = await asyncio.to_thread(alembic, database_url, "downgrade", "-1")
    below = await revision_of(engine)
    assert below is not None and below != head, out
    assert f"Running downgrade {head} -> {below}" in out, out
    out = await asyncio.to_thread(alembic, database_url, "upgrade", "head")
    assert await revision_of(engine) == head
    assert f"Running upgrade {below} -> {head}" in out, out
    assert f"{head} (head)" in await asyncio.to_thread(alembic, database_url, "current")


async def test_autogenerate_finds_nothing_to_change(database_url: str, tmp_path: Path) -> None:
    """Against a migrated database it writes an empty revision: the models and the
    migrations agree. (In a copy of alembic.ini and migrations/, so the tree is untouched.)"""
    shutil.copy(repo_root() / "alembic.ini", tmp_path / "alembic.ini")
    shutil.copytree(repo_root() / "migrations", tmp_path / "migrations")
    out = await asyncio.to_thread(
        alembic,
        database_url,
        "-c",
        str(tmp_path / "alembic.ini"),
        "revision",
        "--autogenerate",
        "-m",
        "nothing changed",
        "--rev-id",
        "9999",
    )
    written = tmp_path / "migrations/versions/9999_nothing_changed.py"
    assert written.exists(), out
    text = written.read_text()
    assert f"down_revision: str | None = {head_revision()!r}" in text, text
    for function in ("upgrade", "downgrade"):
        body = text.split(f"def {function}() -> None:\n", 1)[1].split("\n\n", 1)[0]
        code = [line.strip() for line in body.splitlines() if not line.strip().startswith("#")]
        assert code == ["pass"], text


async def test_every_downgrade_runs(engine: AsyncEngine, database_url: str) -> None:
    ours = await tables(engine)
    assert {"task", "task_event", "schedule", "workflow"} <= ours
    await asyncio.to_thread(command.downgrade, alembic_config(database_url), "base")
    assert await tables(engine) & ours == {"alembic_version"} & ours
    assert await revision_of(engine) is None
    await asyncio.to_thread(migrate, database_url)
    assert await revision_of(engine) == head_revision()
    assert await tables(engine) == ours
