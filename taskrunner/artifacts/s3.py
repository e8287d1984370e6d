"""The S3 artifact store: objects in a bucket of MinIO or any S3 service, which serves
downloads and takes uploads through its own presigned URLs.

A stream of unknown size goes up multipart; one that fails or is cancelled is aborted
and leaves neither an object nor parts behind.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from miniopy_async.api import Minio
from miniopy_async.error import S3Error

from taskrunner.artifacts.downloads import attachment
from taskrunner.artifacts.streams import (
    CHUNK_BYTES,
    ArtifactData,
    Chunks,
    Meter,
    Stored,
    chunks_of,
)


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

    def served_file(self, key: str) -> Path | None:
        return None  # downloads go to the bucket's presigned URLs (download_url)

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
