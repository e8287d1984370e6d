"""The GraphQL types of a task's files: Artifact (a stored file) and ArtifactUpload."""

from __future__ import annotations

import uuid
from datetime import datetime

import strawberry

from api.context import Info
from taskrunner.models import Artifact as ArtifactRow


@strawberry.type(description="A file a task produced.")
class Artifact:
    id: strawberry.ID
    name: str
    content_type: str
    size: int
    sha256: str
    created_at: datetime

    key: strawberry.Private[str]

    @strawberry.field(description="Where to download it; the link expires.")
    async def url(self, info: Info) -> str:
        services = info.context.services
        ttl = services.settings.artifact_url_ttl_seconds
        direct = await services.store.download_url(self.key, ttl)
        if direct is not None:
            return direct
        return f"{info.context.base_url}{services.signer.path(uuid.UUID(str(self.id)), ttl)}"

    @classmethod
    def from_row(cls, row: ArtifactRow) -> Artifact:
        return cls(
            id=strawberry.ID(str(row.id)),
            name=row.name,
            content_type=row.content_type,
            size=row.size,
            sha256=row.sha256,
            created_at=row.created_at,
            key=row.key,
        )


@strawberry.type(description="Where to PUT a file; then call completeArtifactUpload.")
class ArtifactUpload:
    id: strawberry.ID
    url: str
    method: str
    expires_at: datetime
