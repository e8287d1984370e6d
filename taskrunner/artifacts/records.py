"""Artifact storage: bytes in a store, metadata in PostgreSQL.

Bytes are streamed, never held whole in memory: size and sha256 are computed on the way,
and a stream that passes TASK_MAX_ARTIFACT_MB is stopped and leaves nothing behind.
`LocalStore` keeps files under DATA_DIR (the default); URLs to them are HMAC-signed and
expire, and the api serves them (`/artifacts/{id}`, with Range requests).

Quotas (`Quota`): a task has at most MAX_ARTIFACTS_PER_TASK artifacts and an owner at most
OWNER_MAX_ARTIFACT_MB of them. An upload granted by createArtifactUpload is a row of
`artifact_upload` that holds a place among its task's artifacts and reserves bytes of its
owner's quota until it is completed or expires (the workers then delete it and its bytes).
Every check and every grant runs under one advisory lock per owner, so requests made at
the same moment cannot all see the same room and race past the quota. The task.log files
the runner writes count towards the owner's bytes but are never refused.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import logging
import math
import os
import re
import shutil
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

import anyio
import anyio.to_thread
import asyncpg
import sqlalchemy as sa
from miniopy_async.api import Minio
from miniopy_async.error import S3Error
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import journal
from taskrunner.config import Settings
from taskrunner.errors import BadInput, Conflict, LimitExceeded, NotFound
from taskrunner.events import EventKind, publish
from taskrunner.models import Artifact, artifact_table, artifact_upload_table, event_table

log = logging.getLogger(__name__)
CHUNK_BYTES = 1024 * 1024
Chunks = AsyncIterator[bytes]
ArtifactData = bytes | Path | Chunks


class ArtifactTooLarge(LimitExceeded):
    """The artifact passed TASK_MAX_ARTIFACT_MB while it streamed in."""


class ArtifactQuotaExceeded(LimitExceeded):
    """No room for another artifact: MAX_ARTIFACTS_PER_TASK or OWNER_MAX_ARTIFACT_MB."""


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


def attachment(filename: str) -> str:
    """The Content-Disposition of a download: saved as `filename`, never shown inline (an
    HTML or SVG artifact must not run as a page of the site that serves it). Quoted like
    Starlette's FileResponse: a plain name as is, any other in RFC 5987 form."""
    quoted = urllib.parse.quote(filename)
    if quoted != filename:
        return f"attachment; filename*=utf-8''{quoted}"
    return f'attachment; filename="{filename}"'


@dataclass(frozen=True)
class Quota:
    """The storage bounds every artifact and upload grant of a client or a task fits in."""

    max_per_task: int  # MAX_ARTIFACTS_PER_TASK
    owner_max_mb: float  # OWNER_MAX_ARTIFACT_MB

    @property
    def owner_max_bytes(self) -> int:
        return int(self.owner_max_mb * 1024 * 1024)

    @classmethod
    def of(cls, settings: Settings) -> Quota:
        return cls(settings.max_artifacts_per_task, settings.owner_max_artifact_mb)

    def owner_message(self, detail: str) -> str:
        return (
            f"over OWNER_MAX_ARTIFACT_MB ({self.owner_max_mb:g} MB): {detail}; complete open "
            "uploads or let them expire, wait for old artifacts to expire "
            "(ARTIFACT_RETENTION_DAYS), or raise the limit"
        )


def _mb(size: int) -> str:
    return f"{size / 1024 / 1024:.4g} MB"


@dataclass(frozen=True)
class Usage:
    """What an owner stores and reserves, and the places its task's artifacts take."""

    stored: int  # bytes of the owner's artifacts
    reserved: int  # bytes the owner's open uploads may still grow to
    places: int  # the task's artifacts (task.log files aside) and open uploads

    def _over(self, quota: Quota, task_id: uuid.UUID) -> None:
        if self.places >= quota.max_per_task:
            raise ArtifactQuotaExceeded(
                f"MAX_ARTIFACTS_PER_TASK ({quota.max_per_task}) reached: task {task_id} has "
                f"{self.places} artifacts and open uploads; store fewer, larger files (an "
                "archive), or raise the limit"
            )

    def room(self, quota: Quota, task_id: uuid.UUID) -> int:
        """Bytes one more artifact of the task may have; ArtifactQuotaExceeded if none."""
        self._over(quota, task_id)
        room = quota.owner_max_bytes - self.stored - self.reserved
        if room <= 0:
            raise ArtifactQuotaExceeded(
                quota.owner_message(
                    f"this owner's artifacts take {_mb(self.stored)} and open uploads reserve "
                    f"{_mb(self.reserved)}"
                )
            )
        return room

    def admit(self, quota: Quota, task_id: uuid.UUID, size: int) -> None:
        """Refuse (ArtifactQuotaExceeded) an artifact of `size` bytes that does not fit."""
        self._over(quota, task_id)
        if self.stored + self.reserved + size > quota.owner_max_bytes:
            raise ArtifactQuotaExceeded(
                quota.owner_message(
                    f"this owner's artifacts take {_mb(self.stored)}, open uploads reserve "
                    f"{_mb(self.reserved)}, and this one has {_mb(size)}"
                )
            )


TASK_OWNER = "SELECT owner FROM task WHERE id = $1"
# Taken before an owner's usage is read and changed, until the transaction ends.
QUOTA_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('taskrunner.artifact_quota:' || $1, 0))"
USAGE = """
SELECT (SELECT coalesce(sum(size), 0) FROM artifact WHERE owner = $1)::bigint AS stored,
       (SELECT coalesce(sum(max_bytes), 0) FROM artifact_upload WHERE owner = $1)::bigint
         AS reserved,
       (SELECT count(*) FROM artifact WHERE task_id = $2 AND NOT is_log)
       + (SELECT count(*) FROM artifact_upload WHERE task_id = $2) AS places
"""


async def _usage(conn: asyncpg.Connection, owner: str, task_id: uuid.UUID) -> Usage:
    row = await conn.fetchrow(USAGE, owner, task_id)
    assert row is not None  # one row of aggregates
    return Usage(row["stored"], row["reserved"], row["places"])


async def room_for(engine: AsyncEngine, task_id: uuid.UUID, quota: Quota) -> int:
    """Before streaming: the bytes a new artifact of the task may have (its owner's room),
    or ArtifactQuotaExceeded at once rather than after sending it all. The final word is
    the check in the transaction that records it."""
    async with journal.connection(engine) as conn:
        owner = await conn.fetchval(TASK_OWNER, task_id)
        if owner is None:
            return quota.owner_max_bytes  # no such task: recording it refuses it
        usage = await _usage(conn, owner, task_id)
    return usage.room(quota, task_id)


@dataclass(frozen=True)
class Stored:
    size: int
    sha256: str


async def chunks_of(data: ArtifactData) -> Chunks:
    """Any accepted artifact source as a stream of chunks."""
    if isinstance(data, bytes):
        for start in range(0, len(data), CHUNK_BYTES):
            yield data[start : start + CHUNK_BYTES]
    elif isinstance(data, Path):
        async with await anyio.open_file(data, "rb") as f:
            while chunk := await f.read(CHUNK_BYTES):
                yield chunk
    else:
        async for chunk in data:
            yield chunk


class Meter:
    """Counts and hashes a stream as it passes; stops it past `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._sha = hashlib.sha256()

    async def measure(self, chunks: Chunks) -> Chunks:
        async for chunk in chunks:
            self.size += len(chunk)
            if self.size > self.max_bytes:
                raise ArtifactTooLarge(
                    f"artifact is larger than TASK_MAX_ARTIFACT_MB "
                    f"({self.max_bytes / 1024 / 1024:g} MB); store less, or raise the limit"
                )
            self._sha.update(chunk)
            yield chunk

    def stored(self) -> Stored:
        return Stored(self.size, self._sha.hexdigest())


class ArtifactStore(Protocol):
    async def put(
        self, key: str, data: ArtifactData, *, content_type: str, max_bytes: int
    ) -> Stored:
        """Store `data` under `key`; ArtifactTooLarge (and nothing stored) past `max_bytes`."""
        ...

    async def delete(self, key: str) -> None: ...

    async def discard(self, prefix: str) -> None:
        """Delete everything under `prefix` (a folder such as `task/upload/`): objects,
        partial files, incomplete multipart uploads."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def download_url(self, key: str, ttl_seconds: int) -> str | None:
        """A direct, expiring download URL, or None when the api serves the bytes."""
        ...

    async def upload_url(self, key: str, ttl_seconds: int) -> str | None:
        """A direct, expiring PUT URL, or None when uploads go through the api."""
        ...

    def read(self, key: str) -> Chunks:
        """The stored bytes, as a stream."""
        ...

    async def aclose(self) -> None: ...


@dataclass
class LocalStore:
    """Files under `root` (DATA_DIR/artifacts for `taskrunner dev`)."""

    root: Path

    def path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"artifact key escapes the store: {key!r}")
        return path

    async def put(
        self, key: str, data: ArtifactData, *, content_type: str, max_bytes: int
    ) -> Stored:
        target = self.path(key)
        await anyio.Path(target.parent).mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
        meter = Meter(max_bytes)
        try:
            async with await anyio.open_file(partial, "wb") as f:
                async for chunk in meter.measure(chunks_of(data)):
                    await f.write(chunk)
            await anyio.Path(partial).rename(target)
        finally:
            await anyio.Path(partial).unlink(missing_ok=True)
        return meter.stored()

    async def delete(self, key: str) -> None:
        path = anyio.Path(self.path(key))
        await path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the artifact's own folder, once empty
            await path.parent.rmdir()

    async def discard(self, prefix: str) -> None:
        path = self.path(prefix)
        if path == self.root.resolve():
            raise ValueError(f"refusing to discard the whole store: {prefix!r}")
        await anyio.to_thread.run_sync(functools.partial(shutil.rmtree, path, ignore_errors=True))

    async def exists(self, key: str) -> bool:
        return await anyio.Path(self.path(key)).exists()

    async def download_url(self, key: str, ttl_seconds: int) -> str | None:
        return None  # the api serves local files itself, through a signed link

    async def upload_url(self, key: str, ttl_seconds: int) -> str | None:
        return None  # uploads go through the api (PUT /artifacts/uploads/{id})

    async def read(self, key: str) -> Chunks:
        async for chunk in chunks_of(self.path(key)):
            yield chunk

    async def aclose(self) -> None:
        return None


class _Reader:
    """A chunk stream as the `read(size)` that miniopy-async uploads from."""

    def __init__(self, chunks: Chunks) -> None:
        self._chunks = chunks
        self._buffer = bytearray()
        self._done = False

    async def read(self, size: int = -1) -> bytes:
        while not self._done and (size < 0 or len(self._buffer) < size):
            try:
                self._buffer += await anext(self._chunks)
            except StopAsyncIteration:
                self._done = True
        n = len(self._buffer) if size < 0 else min(size, len(self._buffer))
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out


@dataclass
class S3Store:
    """A bucket of MinIO or any S3 service, through miniopy-async. Uploads of unknown size
    go multipart, PART_BYTES at a time; a failed one is aborted and leaves no object."""

    client: Minio
    bucket: str
    _bucket_ready: bool = False

    PART_BYTES = 8 * 1024 * 1024

    async def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        if not await self.client.bucket_exists(self.bucket):
            try:
                await self.client.make_bucket(self.bucket)
            except S3Error as exc:  # another process made it first
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
        self._bucket_ready = True

    async def put(
        self, key: str, data: ArtifactData, *, content_type: str, max_bytes: int
    ) -> Stored:
        await self._ensure_bucket()
        meter = Meter(max_bytes)
        reader = _Reader(meter.measure(chunks_of(data)))
        try:
            await self.client.put_object(
                self.bucket,
                key,
                reader,  # type: ignore[arg-type]  # it reads with an async read()
                length=-1,
                part_size=self.PART_BYTES,
                content_type=content_type,
            )
        except BaseException:
            # miniopy-async aborts its multipart upload on an Exception, not when the task
            # is cancelled (a timeout, a cancelTask): abort it here, or its parts stay
            with contextlib.suppress(Exception):
                await self.client.remove_object(self.bucket, key)
            with contextlib.suppress(Exception):
                await self._abort_incomplete(key)
            raise
        return meter.stored()

    async def delete(self, key: str) -> None:
        await self.client.remove_object(self.bucket, key)

    async def discard(self, prefix: str) -> None:
        await self._ensure_bucket()
        names = [
            o.object_name
            async for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
        ]
        for name in names:
            if name is not None:
                await self.client.remove_object(self.bucket, name)
        await self._abort_incomplete(prefix)

    async def _abort_incomplete(self, prefix: str) -> None:
        """Abort the multipart uploads under `prefix` that were neither completed nor
        aborted: they hold storage without being objects. miniopy-async (like minio-py 7)
        has no public call for this; these two are its own S3 ListMultipartUploads and
        AbortMultipartUpload."""
        listed = await self.client._list_multipart_uploads(self.bucket, prefix=prefix)
        for upload in listed.uploads:
            if upload.object_name is not None and upload.upload_id is not None:
                await self.client._abort_multipart_upload(
                    self.bucket, upload.object_name, upload.upload_id
                )

    async def exists(self, key: str) -> bool:
        try:
            await self.client.stat_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                return False
            raise
        return True

    async def download_url(self, key: str, ttl_seconds: int) -> str | None:
        # S3 answers with this Content-Disposition (the request asks for it, signed): the
        # browser saves the file under its name instead of showing it
        disposition = attachment(key.rsplit("/", 1)[-1])
        return str(
            await self.client.presigned_get_object(
                self.bucket,
                key,
                expires=timedelta(seconds=ttl_seconds),
                response_headers={"response-content-disposition": disposition},
            )
        )

    async def upload_url(self, key: str, ttl_seconds: int) -> str | None:
        await self._ensure_bucket()
        return str(
            await self.client.presigned_put_object(
                self.bucket, key, expires=timedelta(seconds=ttl_seconds)
            )
        )

    async def read(self, key: str) -> Chunks:
        response = await self.client.get_object(self.bucket, key)
        try:
            async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                yield chunk
        finally:
            response.close()

    async def aclose(self) -> None:
        await self.client.close_session()  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class Signer:
    """Expiring HMAC signatures for local artifact URLs."""

    key: bytes

    # What a link lets its holder do; a download link never works as an upload link.
    ROUTES = {"download": "/artifacts/{}", "upload": "/artifacts/uploads/{}"}

    def signature(self, artifact_id: uuid.UUID, expires: int, purpose: str = "download") -> str:
        message = f"{purpose}:{artifact_id}:{expires}".encode()
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()

    def path(self, artifact_id: uuid.UUID, ttl_seconds: int, purpose: str = "download") -> str:
        expires = math.ceil(time.time()) + ttl_seconds  # valid at least ttl_seconds
        signature = self.signature(artifact_id, expires, purpose)
        route = self.ROUTES[purpose].format(artifact_id)
        return f"{route}?expires={expires}&signature={signature}"

    def valid(
        self, artifact_id: uuid.UUID, expires: int, signature: str, purpose: str = "download"
    ) -> bool:
        expected = self.signature(artifact_id, expires, purpose).encode()
        # as bytes: compare_digest refuses str with non-ASCII characters (a TypeError)
        given = signature.encode("utf-8", "replace")
        return hmac.compare_digest(expected, given) and expires >= time.time()


def load_or_create_key(path: Path) -> bytes:
    """A signing key kept in a file (for `taskrunner dev`), made on first use."""
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    key = os.urandom(32)
    path.write_text(key.hex())
    path.chmod(0o600)
    return key


def object_key(task_id: uuid.UUID, artifact_id: uuid.UUID, name: str) -> str:
    """Where an artifact's bytes live in the store."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:200]
    if safe in ("", ".", ".."):  # check_name refuses these; never a directory as a key
        safe = "artifact"
    return f"{task_id}/{artifact_id}/{safe}"


def make_store(settings: Settings) -> ArtifactStore:
    """The store the settings ask for: S3/MinIO when MINIO_ENDPOINT is set, else the local
    disk under DATA_DIR. Build it inside the event loop that will use it."""
    if settings.minio_endpoint:
        client = Minio(
            settings.minio_endpoint,
            access_key=settings.minio_access_key,
            secret_key=settings.minio_secret_key.get_secret_value(),
            secure=settings.minio_secure,
            region=settings.minio_region,
        )
        return S3Store(client, settings.minio_bucket)
    return LocalStore(settings.data_dir.resolve() / "artifacts")


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
    change = journal.Change(task_id, EventKind.ARTIFACT, meta, expect_attempt=expect_attempt)

    async def work(conn: asyncpg.Connection) -> tuple[Artifact | None, list[journal.Outcome]]:
        if upload_id is not None and await conn.fetchval(TAKE_UPLOAD, upload_id) is None:
            raise _UploadGone
        if quota is not None:
            owner = await conn.fetchval(TASK_OWNER, task_id)
            if owner is not None:  # (no task: journal.record refuses the change below)
                await conn.execute(QUOTA_LOCK, owner)
                (await _usage(conn, owner, task_id)).admit(quota, task_id, stored.size)
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


# --- uploads by clients -----------------------------------------------------------------
#
# A grant lives in `artifact_upload`: its PUT URL is valid for ARTIFACT_UPLOAD_TTL_SECONDS,
# and it can be completed for twice that (a PUT begun just before its URL expired may still
# be arriving). Past that it has expired: nothing takes it any more, and the workers'
# sweep (`expire_uploads`) deletes whatever reached its folder, then the row.


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
        room = (await _usage(conn, owner, task_id)).room(quota, task_id)
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
    async with journal.connection(engine) as conn:
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
    async with journal.connection(engine) as conn:
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


async def store_task_log(
    *,
    engine: AsyncEngine,
    redis: Redis,
    store: ArtifactStore,
    task_id: uuid.UUID,
    attempt: int,
    max_bytes: int,
) -> None:
    """Write the task's whole log so far (every attempt) to the store as `task.log`, before
    its final status (a task that logged nothing gets no file). Never raises: the outcome
    of the task matters more than its log file."""
    e = event_table.c
    query = (
        sa.select(e.at, e.data)
        .where(e.task_id == task_id, e.kind == EventKind.LOG.value)
        .order_by(e.seq)
    )
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        if not rows:
            return
        text = "".join(
            f"{r.at.isoformat()} {r.data.get('level', 'info').upper()} {r.data.get('line', '')}\n"
            for r in rows
        )
        await add_artifact(
            engine=engine,
            redis=redis,
            store=store,
            task_id=task_id,
            name="task.log",
            data=text.encode(),
            content_type="text/plain; charset=utf-8",
            max_bytes=max_bytes,
            is_log=True,
            expect_attempt=attempt,
        )
    except Exception:
        log.exception("could not store the log of task %s", task_id)
