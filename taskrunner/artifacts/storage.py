"""The artifact store: what every backend offers, where an artifact's bytes go, and the
backend the settings choose.

Bytes live in a store, metadata in PostgreSQL. `LocalStore` keeps files under DATA_DIR
(the default): links to them are signed by the api, expire, and the api serves them
(`/artifacts/{id}`, with Range requests). `S3Store` keeps objects in a bucket of MinIO
or any S3 service, which serves them through its own presigned URLs.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Protocol

from miniopy_async.api import Minio

from taskrunner.artifacts.local import LocalStore
from taskrunner.artifacts.s3 import S3Store
from taskrunner.artifacts.streams import ArtifactData, Chunks, Stored
from taskrunner.config import Settings


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

    def served_file(self, key: str) -> Path | None:
        """The file the api serves for a signed download link to `key`, or None when the
        store serves downloads itself (`download_url`)."""
        ...

    async def upload_url(self, key: str, ttl_seconds: int) -> str | None:
        """A direct, expiring PUT URL, or None when uploads go through the api."""
        ...

    def read(self, key: str) -> Chunks:
        """The stored bytes, as a stream."""
        ...

    async def aclose(self) -> None: ...


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
