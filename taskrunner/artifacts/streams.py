"""Artifact bytes as a stream: any source in chunks, counted and hashed as they pass.

Bytes are streamed, never held whole in memory: size and sha256 are computed on the way,
and a stream that passes its limit (TASK_MAX_ARTIFACT_MB, or less) is stopped with
ArtifactTooLarge; the store that was writing it leaves nothing behind.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio

from taskrunner.errors import LimitExceeded

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
