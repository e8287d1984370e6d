"""The local-disk artifact store: files under a root folder, served by the api.

A file is written to a partial name beside its key and renamed into place once whole, so
a stream stopped midway (too large, cancelled) leaves nothing under its key.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread

from taskrunner.artifacts.streams import ArtifactData, Chunks, Meter, Stored, chunks_of


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

    def served_file(self, key: str) -> Path | None:
        return self.path(key)

    async def upload_url(self, key: str, ttl_seconds: int) -> str | None:
        return None  # uploads go through the api (PUT /artifacts/uploads/{id})

    async def read(self, key: str) -> Chunks:
        async for chunk in chunks_of(self.path(key)):
            yield chunk

    async def aclose(self) -> None:
        return None
