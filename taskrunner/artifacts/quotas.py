"""Artifact storage quotas: the places a task's artifacts take and the bytes an owner
stores, checked and granted under one lock per owner.

A task has at most MAX_ARTIFACTS_PER_TASK artifacts and an owner at most
OWNER_MAX_ARTIFACT_MB of them. An open upload grant (`artifact_upload`) holds a place
among its task's artifacts and reserves bytes of its owner's quota until it is completed
or expires. Every check and every grant runs under one advisory lock per owner, so
requests made at the same moment cannot all see the same room and race past the quota.
The task.log files the runner writes count towards the owner's bytes but are never
refused.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import connections
from taskrunner.config import Settings
from taskrunner.errors import LimitExceeded


class ArtifactQuotaExceeded(LimitExceeded):
    """No room for another artifact: MAX_ARTIFACTS_PER_TASK or OWNER_MAX_ARTIFACT_MB."""


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


async def read_usage(conn: asyncpg.Connection, owner: str, task_id: uuid.UUID) -> Usage:
    """The owner's usage and the task's places; under QUOTA_LOCK when it decides a grant."""
    row = await conn.fetchrow(USAGE, owner, task_id)
    assert row is not None  # one row of aggregates
    return Usage(row["stored"], row["reserved"], row["places"])


async def room_for(engine: AsyncEngine, task_id: uuid.UUID, quota: Quota) -> int:
    """Before streaming: the bytes a new artifact of the task may have (its owner's room),
    or ArtifactQuotaExceeded at once rather than after sending it all. The final word is
    the check in the transaction that records it."""
    async with connections.connection(engine) as conn:
        owner = await conn.fetchval(TASK_OWNER, task_id)
        if owner is None:
            return quota.owner_max_bytes  # no such task: recording it refuses it
        usage = await read_usage(conn, owner, task_id)
    return usage.room(quota, task_id)
