"""Artifact records: an artifact's bytes in the store and its row and ArtifactAdded event
in PostgreSQL, recorded together or not at all; listing, lookup and retention.

Bytes go to the store first (streamed and metered: `streams`), then the row and event are
written in one transaction; when that fails, or the task no longer runs, the bytes are
removed again. Retention deletes bytes before rows.
"""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import asyncpg
import sqlalchemy as sa
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import journal
from taskrunner.artifacts.quotas import (
    QUOTA_LOCK,
    TASK_OWNER,
    ArtifactQuotaExceeded,
    Quota,
    read_usage,
    room_for,
)
from taskrunner.artifacts.storage import ArtifactStore, object_key
from taskrunner.artifacts.streams import ArtifactData, ArtifactTooLarge, Stored
from taskrunner.changes import Change, Outcome
from taskrunner.errors import BadInput, Conflict, NotFound
from taskrunner.events import EventKind, publish
from taskrunner.models import Artifact, artifact_table

MAX_NAME_CHARS = 200
MAX_CONTENT_TYPE_CHARS = 255
# RFC 6838 type/subtype, then parameters of printable ASCII: the value is sent back as a
# header on download, so no control character (CR/LF would split the response) gets in.
CONTENT_TYPE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
    r"(?:\s*;[\x20-\x7e]*)?"
)


def check_name(name: str, field: str = "name") -> None:
    """An artifact's name is a file name: 1 to 200 characters, and not `.` or `..` (which
    name directories: as a store key they would point at the artifact's folder or its
    task's, on disk and in S3 alike)."""
    if not 1 <= len(name) <= MAX_NAME_CHARS:
        raise BadInput(f"{field}: give 1 to {MAX_NAME_CHARS} characters", field=field)
    if name in (".", ".."):
        raise BadInput(
            f'{field}: {name!r} names a directory, not a file; give a file name such as "data.txt"',
            field=field,
        )


def check_content_type(value: str, field: str = "contentType") -> None:
    """A content type is a media type (`type/subtype`, parameters allowed), in printable
    ASCII: it is a header of every download of the artifact."""
    if len(value) > MAX_CONTENT_TYPE_CHARS or not CONTENT_TYPE.fullmatch(value):
        raise BadInput(
            f'{field}: not a media type; give one such as "text/csv" or '
            f'"application/json; charset=utf-8" (printable ASCII, at most '
            f"{MAX_CONTENT_TYPE_CHARS} characters)",
            field=field,
        )


async def add_artifact(
    *,
    engine: AsyncEngine,
    redis: Redis,
    store: ArtifactStore,
    task_id: uuid.UUID,
    name: str,
    data: ArtifactData,
    content_type: str,
    max_bytes: int,
    is_log: bool = False,
    expect_attempt: int | None = None,
    quota: Quota | None = None,
) -> Artifact:
    """Stream `data` into the store, then record the artifact and its ArtifactAdded event
    in one transaction. If the task no longer runs (that attempt), the bytes are removed
    and Conflict is raised. With a `quota` (every artifact but the runner's task.log) the
    stream is also stopped at the owner's room, and the artifact must fit when recorded:
    ArtifactQuotaExceeded otherwise, with nothing kept."""
    check_name(name)
    check_content_type(content_type)
    artifact_id = uuid.uuid4()
    key = object_key(task_id, artifact_id, name)
    limit = max_bytes if quota is None else min(max_bytes, await room_for(engine, task_id, quota))
    try:
        stored = await store.put(key, data, content_type=content_type, max_bytes=limit)
    except ArtifactTooLarge:
        if quota is not None and limit < max_bytes:  # it was the owner's room that ran out
            raise ArtifactQuotaExceeded(
                quota.owner_message(f"{name!r} is larger than the {limit} bytes left")
            ) from None
        raise
    return await record_artifact(
        engine=engine,
        redis=redis,
        store=store,
        task_id=task_id,
        artifact_id=artifact_id,
        key=key,
        name=name,
        content_type=content_type,
        stored=stored,
        is_log=is_log,
        expect_attempt=expect_attempt,
        quota=quota,
    )


INSERT_ARTIFACT = (
    "INSERT INTO artifact (id, task_id, owner, name, content_type, size, sha256, key, is_log, "
    f"created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) "
    f"RETURNING {', '.join(artifact_table.c.keys())}"
)
# An open grant, taken by its completion (an expired one is the sweep's).
TAKE_UPLOAD = (
    "DELETE FROM artifact_upload WHERE id = $1 AND expires_at > clock_timestamp() RETURNING id"
)


class _UploadGone(Exception):
    """The grant expired or was completed by another call meanwhile: its bytes are not
    this call's to delete (the sweep, or the artifact that call recorded, owns them)."""


async def record_artifact(
    *,
    engine: AsyncEngine,
    redis: Redis,
    store: ArtifactStore,
    task_id: uuid.UUID,
    artifact_id: uuid.UUID,
    key: str,
    name: str,
    content_type: str,
    stored: Stored,
    is_log: bool = False,
    expect_attempt: int | None = None,
    quota: Quota | None = None,
    upload_id: uuid.UUID | None = None,
) -> Artifact:
    """Record stored bytes as an artifact with its ArtifactAdded event (one transaction);
    when the task has ended (or the attempt was replaced), or the artifact does not fit in
    the `quota`, the bytes are removed. `upload_id`: the grant this completes, taken in
    the same transaction (NotFound if it is gone)."""
    meta = {
        "id": str(artifact_id),
        "name": name,
        "content_type": content_type,
        "size": stored.size,
        "sha256": stored.sha256,
        "key": key,
    }
    change = Change(task_id, EventKind.ARTIFACT, meta, expect_attempt=expect_attempt)

    async def work(conn: asyncpg.Connection) -> tuple[Artifact | None, list[Outcome]]:
        if upload_id is not None and await conn.fetchval(TAKE_UPLOAD, upload_id) is None:
            raise _UploadGone
        if quota is not None:
            owner = await conn.fetchval(TASK_OWNER, task_id)
            if owner is not None:  # (no task: journal.record refuses the change below)
                await conn.execute(QUOTA_LOCK, owner)
                (await read_usage(conn, owner, task_id)).admit(quota, task_id, stored.size)
        outcomes = await journal.record(conn, [change])
        event = outcomes[0].event
        if event is None:
            return None, outcomes
        row = await conn.fetchrow(
            INSERT_ARTIFACT,
            artifact_id,
            task_id,
            event.owner,
            name,
            content_type,
            stored.size,
            stored.sha256,
            key,
            is_log,
            event.at,
        )
        assert row is not None  # RETURNING of a row inserted
        return Artifact(**dict(row)), outcomes

    try:
        artifact, outcomes = await journal.run_transaction(engine, work)
    except _UploadGone:
        raise NotFound(
            f"uploadId: upload {upload_id} has expired or was completed already; start "
            "again with createArtifactUpload",
            field="uploadId",
        ) from None
    except BaseException:
        await store.delete(key)
        raise
    if artifact is None:
        await store.delete(key)
        raise Conflict(
            f"task {task_id} has ended; artifacts are added while it is QUEUED or RUNNING"
        )
    await publish(redis, [o.event for o in outcomes if o.event is not None])
    return artifact


async def list_artifacts(engine: AsyncEngine, task_id: uuid.UUID) -> list[Artifact]:
    a = artifact_table.c
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.select(artifact_table).where(a.task_id == task_id).order_by(a.created_at, a.id)
        )
        return [Artifact(**dict(r)) for r in rows.mappings()]


async def get_artifact(engine: AsyncEngine, artifact_id: uuid.UUID) -> Artifact | None:
    async with engine.connect() as conn:
        row = (
            (
                await conn.execute(
                    sa.select(artifact_table).where(artifact_table.c.id == artifact_id)
                )
            )
            .mappings()
            .first()
        )
    return Artifact(**dict(row)) if row else None


async def delete_expired(
    engine: AsyncEngine, store: ArtifactStore, older_than: timedelta, limit: int = 1000
) -> int:
    """Delete artifacts created before now - `older_than`: bytes first, then rows (a crash
    in between leaves a row whose bytes are gone, deleted on the next pass)."""
    a = artifact_table.c
    cutoff = sa.func.clock_timestamp() - older_than
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.select(a.id, a.key)
                .where(a.created_at < cutoff)
                .order_by(a.created_at)
                .limit(limit)
            )
        ).all()
    for row in rows:
        await store.delete(row.key)
    if rows:
        async with engine.begin() as conn:
            await conn.execute(sa.delete(artifact_table).where(a.id.in_([r.id for r in rows])))
    return len(rows)
