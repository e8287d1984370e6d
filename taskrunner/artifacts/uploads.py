"""Client uploads of artifacts: grants, the bytes PUT to them, their completion as
artifacts, and the sweep of grants that expired.

A grant lives in `artifact_upload`: its PUT URL is valid for ARTIFACT_UPLOAD_TTL_SECONDS,
and it can be completed for twice that (a PUT begun just before its URL expired may still
be arriving). Until then it holds a place among its task's artifacts and reserves bytes
of its owner's quota (`quotas`). Past that it has expired: nothing takes it any more, and
the workers' sweep (`expire_uploads`) deletes whatever reached its folder, then the row.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
import sqlalchemy as sa
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import connections, journal
from taskrunner.artifacts.quotas import QUOTA_LOCK, TASK_OWNER, Quota, read_usage
from taskrunner.artifacts.records import check_content_type, check_name, record_artifact
from taskrunner.artifacts.storage import ArtifactStore, object_key
from taskrunner.artifacts.streams import ArtifactData, ArtifactTooLarge, Meter, Stored
from taskrunner.errors import Conflict, NotFound
from taskrunner.models import Artifact, artifact_upload_table


@dataclass(frozen=True)
class Upload:
    """An upload a client was granted: where the bytes go, what they will be, and how
    large they may be (what the grant reserved of its owner's quota)."""

    id: uuid.UUID
    task_id: uuid.UUID
    name: str
    content_type: str
    key: str
    max_bytes: int
    expires_at: datetime

    @property
    def prefix(self) -> str:
        """The grant's folder in the store: its bytes, and any partial file of them."""
        return f"{self.task_id}/{self.id}/"


UPLOAD_COLUMNS = "id, task_id, name, content_type, key, max_bytes, expires_at"
INSERT_UPLOAD = (
    "INSERT INTO artifact_upload (id, task_id, owner, name, content_type, key, max_bytes, "
    "expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, clock_timestamp() + $8::interval) "
    f"RETURNING {UPLOAD_COLUMNS}"
)
FIND_UPLOAD = (
    f"SELECT {UPLOAD_COLUMNS} FROM artifact_upload WHERE id = $1 AND expires_at > clock_timestamp()"
)


async def begin_upload(
    engine: AsyncEngine,
    *,
    task_id: uuid.UUID,
    name: str,
    content_type: str,
    ttl_seconds: int,
    max_bytes: int,
    quota: Quota,
) -> Upload:
    """Grant an upload to the task: it takes one of the task's places and reserves up to
    `max_bytes` (TASK_MAX_ARTIFACT_MB) of what is left of its owner's quota, under the
    owner's lock: grants made at the same moment cannot all take the same room."""
    check_name(name)
    check_content_type(content_type)
    upload_id = uuid.uuid4()
    key = object_key(task_id, upload_id, name)

    async def work(conn: asyncpg.Connection) -> Upload:
        owner = await conn.fetchval(TASK_OWNER, task_id)
        if owner is None:
            raise NotFound(f"taskId: there is no task {task_id}", field="taskId")
        await conn.execute(QUOTA_LOCK, owner)
        room = (await read_usage(conn, owner, task_id)).room(quota, task_id)
        row = await conn.fetchrow(
            INSERT_UPLOAD,
            upload_id,
            task_id,
            owner,
            name,
            content_type,
            key,
            min(max_bytes, room),
            timedelta(seconds=2 * ttl_seconds),
        )
        assert row is not None  # RETURNING of a row inserted
        return Upload(**dict(row))

    return await journal.run_transaction(engine, work)


async def find_upload(engine: AsyncEngine, upload_id: uuid.UUID) -> Upload | None:
    """The open (not expired) grant `upload_id`, or None."""
    async with connections.connection(engine) as conn:
        row = await conn.fetchrow(FIND_UPLOAD, upload_id)
    return Upload(**dict(row)) if row else None


def _over_grant(upload: Upload, max_bytes: int, quota: Quota) -> ArtifactTooLarge | None:
    """When a grant reserved less than TASK_MAX_ARTIFACT_MB (its owner's quota was nearly
    full), passing its reservation is the quota's refusal, which says so."""
    if upload.max_bytes >= max_bytes:
        return None
    return ArtifactTooLarge(
        quota.owner_message(
            f"this upload may have at most the {upload.max_bytes} bytes it reserved when it "
            "was granted"
        )
    )


async def receive_upload(
    *,
    engine: AsyncEngine,
    store: ArtifactStore,
    upload: Upload,
    data: ArtifactData,
    max_bytes: int,
    quota: Quota,
) -> Stored:
    """Stream a PUT to a grant (the local store) into its key, refused past what the grant
    reserved. Bytes that arrive after the grant expired are deleted (the sweep may have
    passed while they streamed in) and NotFound is raised."""
    try:
        stored = await store.put(
            upload.key, data, content_type=upload.content_type, max_bytes=upload.max_bytes
        )
    except ArtifactTooLarge as exc:
        raise (_over_grant(upload, max_bytes, quota) or exc) from None
    if await find_upload(engine, upload.id) is None:
        await store.discard(upload.prefix)
        raise NotFound(f"upload {upload.id} has expired: call createArtifactUpload again")
    return stored


async def complete_upload(
    *,
    engine: AsyncEngine,
    redis: Redis,
    store: ArtifactStore,
    upload: Upload,
    max_bytes: int,
    quota: Quota,
) -> Artifact:
    """Measure the uploaded object (size, sha256, what the grant reserved) and record it,
    taking the grant in the same transaction."""
    if not await store.exists(upload.key):
        raise Conflict(f"upload {upload.id}: nothing was uploaded yet; PUT the file first")
    meter = Meter(min(max_bytes, upload.max_bytes))
    try:
        async for _ in meter.measure(store.read(upload.key)):
            pass
    except ArtifactTooLarge as exc:
        await store.delete(upload.key)
        raise (_over_grant(upload, max_bytes, quota) or exc) from None
    return await record_artifact(
        engine=engine,
        redis=redis,
        store=store,
        task_id=upload.task_id,
        artifact_id=upload.id,
        key=upload.key,
        name=upload.name,
        content_type=upload.content_type,
        stored=meter.stored(),
        quota=quota,
        upload_id=upload.id,
    )


EXPIRED_UPLOADS = (
    "SELECT task_id, id FROM artifact_upload WHERE expires_at <= clock_timestamp() "
    "ORDER BY expires_at LIMIT $1"
)


async def expire_uploads(engine: AsyncEngine, store: ArtifactStore, limit: int = 1000) -> int:
    """Delete grants that expired: their folder first (the bytes, a partial file of a PUT
    cut off, an incomplete multipart upload), then the rows; a crash in between leaves rows
    whose folder is gone, deleted on the next pass. An expired grant cannot be completed or
    PUT to any more, so nothing writes to its folder behind the sweep's back."""
    async with connections.connection(engine) as conn:
        rows = await conn.fetch(EXPIRED_UPLOADS, limit)
    for row in rows:
        await store.discard(f"{row['task_id']}/{row['id']}/")
    if rows:
        u = artifact_upload_table.c
        async with engine.begin() as conn:
            await conn.execute(
                sa.delete(artifact_upload_table).where(u.id.in_([r["id"] for r in rows]))
            )
    return len(rows)
