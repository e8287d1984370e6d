"""Artifacts as tests handle them: the GraphQL operations on a task's artifacts, a store
of its own per test (S3), and the keys a store holds."""

from __future__ import annotations

import uuid

from taskrunner.artifacts.local import LocalStore
from taskrunner.artifacts.s3 import S3Store
from taskrunner.artifacts.storage import ArtifactStore
from taskrunner.config import Settings

ARTIFACTS = """
query($id: ID!) {
  task(id: $id) {
    status logsUrl result
    artifacts { id name contentType size sha256 url createdAt }
  }
}"""
ATTACH = """
mutation($id: ID!, $name: String!, $data: String!) {
  attachArtifact(taskId: $id, name: $name, dataBase64: $data, contentType: "text/plain") {
    name size sha256 url
  }
}"""
UPLOAD = """
mutation($id: ID!) {
  createArtifactUpload(taskId: $id, name: "big.bin", contentType: "application/x-test") {
    id url method expiresAt
  }
}"""
COMPLETE = """
mutation($id: ID!, $upload: ID!) {
  completeArtifactUpload(taskId: $id, uploadId: $upload) { id name size sha256 url contentType }
}"""


def s3_settings(settings: Settings, endpoint: str) -> Settings:
    """`settings` with the S3 store at `endpoint`, in a bucket of its own."""
    return settings.model_copy(
        update={"minio_endpoint": endpoint, "minio_bucket": f"b{uuid.uuid4().hex[:12]}"}
    )


async def store_keys(store: ArtifactStore) -> list[str]:
    """Every key the store holds, sorted (none if its directory or bucket is missing)."""
    if isinstance(store, LocalStore):
        return (
            sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file())
            if store.root.exists()
            else []
        )
    assert isinstance(store, S3Store)
    if not await store.client.bucket_exists(store.bucket):
        return []
    return sorted(
        [str(o.object_name) async for o in store.client.list_objects(store.bucket, recursive=True)]
    )
