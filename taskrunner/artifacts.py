"""Artifact storage: bytes in a store, metadata in PostgreSQL.

Bytes are streamed, never held whole in memory: size and sha256 are computed on the way,
and a stream that passes TASK_MAX_ARTIFACT_MB is stopped and leaves nothing behind.
`LocalStore` keeps files under DATA_DIR (the default); URLs to them are HMAC-signed and
expire, and the api serves them (`/artifacts/{id}`, with Range requests).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Protocol

import anyio
import asyncpg
import orjson
import sqlalchemy as sa
from miniopy_async.api import Minio
from miniopy_async.error import S3Error
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import journal
from taskrunner.config import Settings
from taskrunner.errors import Conflict, LimitExceeded
from taskrunner.events import EventKind, publish
from taskrunner.models import Artifact, artifact_table, event_table

log = logging.getLogger(__name__)
CHUNK_BYTES = 1024 * 1024
Chunks = AsyncIterator[bytes]
ArtifactData = bytes | Path | Chunks


class ArtifactTooLarge(LimitExceeded):
    """The artifact passed TASK_MAX_ARTIFACT_MB while it streamed in."""


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
        await anyio.Path(self.path(key)).unlink(missing_ok=True)

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
            with contextlib.suppress(Exception):
                await self.client.remove_object(self.bucket, key)
            raise
        return meter.stored()

    async def delete(self, key: str) -> None:
        await self.client.remove_object(self.bucket, key)

    async def exists(self, key: str) -> bool:
        try:
            await self.client.stat_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                return False
            raise
        return True

    async def download_url(self, key: str, ttl_seconds: int) -> str | None:
        return str(
            await self.client.presigned_get_object(
                self.bucket, key, expires=timedelta(seconds=ttl_seconds)
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
        expected = self.signature(artifact_id, expires, purpose)
        return hmac.compare_digest(expected, signature) and expires >= time.time()


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
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:200] or "artifact"
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
) -> Artifact:
    """Stream `data` into the store, then record the artifact and its ArtifactAdded event
    in one transaction. If the task no longer runs (that attempt), the bytes are removed
    and Conflict is raised."""
    artifact_id = uuid.uuid4()
    key = object_key(task_id, artifact_id, name)
    stored = await store.put(key, data, content_type=content_type, max_bytes=max_bytes)
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
    )


INSERT_ARTIFACT = (
    "INSERT INTO artifact (id, task_id, owner, name, content_type, size, sha256, key, is_log, "
    f"created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) "
    f"RETURNING {', '.join(artifact_table.c.keys())}"
)


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
) -> Artifact:
    """Record stored bytes as an artifact with its ArtifactAdded event (one transaction);
    when the task has ended (or the attempt was replaced) the bytes are removed."""
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

UPLOAD_KEY = "taskrunner:upload:{}"


@dataclass(frozen=True)
class Upload:
    """An upload a client was granted: where the bytes go, and what they will be."""

    id: uuid.UUID
    task_id: uuid.UUID
    name: str
    content_type: str
    key: str


async def begin_upload(
    redis: Redis, *, task_id: uuid.UUID, name: str, content_type: str, ttl_seconds: int
) -> Upload:
    upload_id = uuid.uuid4()
    upload = Upload(upload_id, task_id, name, content_type, object_key(task_id, upload_id, name))
    payload = {
        "task_id": str(task_id),
        "name": name,
        "content_type": content_type,
        "key": upload.key,
    }
    await redis.set(UPLOAD_KEY.format(upload_id), orjson.dumps(payload), ex=ttl_seconds * 2)
    return upload


async def find_upload(redis: Redis, upload_id: uuid.UUID) -> Upload | None:
    raw = await redis.get(UPLOAD_KEY.format(upload_id))
    if raw is None:
        return None
    data = orjson.loads(raw)
    return Upload(
        upload_id, uuid.UUID(data["task_id"]), data["name"], data["content_type"], data["key"]
    )


async def complete_upload(
    *,
    engine: AsyncEngine,
    redis: Redis,
    store: ArtifactStore,
    upload: Upload,
    max_bytes: int,
) -> Artifact:
    """Measure the uploaded object (size, sha256, the limit) and record it."""
    if not await store.exists(upload.key):
        raise Conflict(f"upload {upload.id}: nothing was uploaded yet; PUT the file first")
    meter = Meter(max_bytes)
    try:
        async for _ in meter.measure(store.read(upload.key)):
            pass
    except ArtifactTooLarge:
        await store.delete(upload.key)
        raise
    artifact = await record_artifact(
        engine=engine,
        redis=redis,
        store=store,
        task_id=upload.task_id,
        artifact_id=upload.id,
        key=upload.key,
        name=upload.name,
        content_type=upload.content_type,
        stored=meter.stored(),
    )
    await redis.delete(UPLOAD_KEY.format(upload.id))
    return artifact


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
