"""Storage quotas: an upload that is never completed expires with its
bytes, artifacts per task and bytes per owner are bounded (open uploads count, so grants
made at the same time cannot race past the quota), retryTask counts against
TASKS_PER_MINUTE, and downloads are attachments a browser does not sniff."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from gql.transport.exceptions import TransportQueryError

from taskrunner.artifacts.local import LocalStore
from taskrunner.artifacts.s3 import S3Store
from taskrunner.artifacts.storage import make_store
from taskrunner.config import Settings
from tests.support.artifacts import ARTIFACTS, ATTACH, COMPLETE, UPLOAD, s3_settings, store_keys
from tests.support.servers import run_api, run_worker
from tests.support.stack import Stack
from tests.support.tasks import finish, submit
from tests.support.waiting import eventually

CANCEL = "mutation($id: ID!) { cancelTask(id: $id) { status } }"
RETRY = "mutation($id: ID!) { retryTask(id: $id) { status } }"


async def _error(stack: Stack, query: str, **variables: Any) -> dict[str, Any]:
    """The one GraphQL error `query` answers with."""
    with pytest.raises(TransportQueryError) as err:
        await stack.execute(query, **variables)
    assert err.value.errors is not None
    (error,) = err.value.errors
    return dict(error)


def _b64(n: int) -> str:
    return base64.b64encode(b"x" * n).decode()


async def _incomplete_uploads(store: S3Store) -> list[str]:
    """Object names of the bucket's multipart uploads that were neither completed nor
    aborted (they hold storage but are not objects)."""
    listed = await store.client._list_multipart_uploads(store.bucket)
    return [u.object_name for u in listed.uploads]


# --- upload grants expire ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["local", "s3"])
async def test_an_upload_never_completed_expires_and_its_bytes_are_deleted(
    settings: Settings, s3_endpoint: str, kind: str
) -> None:
    chosen = s3_settings(settings, s3_endpoint) if kind == "s3" else settings
    chosen = chosen.model_copy(update={"artifact_upload_ttl_seconds": 1})
    store = make_store(chosen)
    try:
        async with run_api(chosen) as url, run_worker(chosen):  # the worker sweeps
            stack = await Stack.keyed(url, chosen)
            task_id = await submit(stack, {"echo": {"message": "x"}}, delaySeconds=600)
            upload = (await stack.execute(UPLOAD, id=task_id))["createArtifactUpload"]
            async with httpx.AsyncClient() as client:
                put = await client.put(upload["url"], content=b"never completed" * 1000)
                assert put.status_code == 200, put.text
            prefix = f"{task_id}/{upload['id']}/"
            assert [k for k in await store_keys(store) if k.startswith(prefix)] != []
            if isinstance(store, S3Store):  # a multipart upload begun for the grant's key
                await store.client._create_multipart_upload(store.bucket, f"{prefix}big.bin", {})
                assert await _incomplete_uploads(store) == [f"{prefix}big.bin"]

            async def swept() -> bool:
                """the expired grant's bytes are deleted"""
                left = await store_keys(store)
                if isinstance(store, S3Store):
                    left += await _incomplete_uploads(store)
                return left == []

            await eventually(swept, within=15, step=0.2)
            error = await _error(stack, COMPLETE, id=task_id, upload=upload["id"])
        assert error["extensions"]["code"] == "NOT_FOUND"
        assert "expired" in error["message"]
        if isinstance(store, LocalStore):  # nothing left of the grant's directory either
            assert not (store.root / task_id / upload["id"]).exists()
    finally:
        await store.aclose()


async def test_a_cancelled_multipart_upload_leaves_no_parts(
    settings: Settings, s3_endpoint: str
) -> None:
    """A task cancelled (or timed out) while its artifact streams to S3: miniopy-async
    aborts its multipart upload on an Exception only, so the parts would stay."""
    store = make_store(s3_settings(settings, s3_endpoint))
    assert isinstance(store, S3Store)
    sent_a_part = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(S3Store.PART_BYTES // (1024 * 1024) + 1):
            yield b"p" * 1024 * 1024
        sent_a_part.set()
        await asyncio.Event().wait()  # then the task hangs until it is cancelled
        yield b""

    try:
        put = asyncio.create_task(
            store.put("t/a/big.bin", endless(), content_type="x", max_bytes=10**9)
        )
        await asyncio.wait_for(sent_a_part.wait(), 20)

        async def begun() -> bool:
            """the multipart upload has begun"""
            return await _incomplete_uploads(store) != []

        await eventually(begun, within=10)
        put.cancel()
        with pytest.raises(asyncio.CancelledError):
            await put
        assert await _incomplete_uploads(store) == []
        assert await store_keys(store) == []
    finally:
        await store.aclose()


# --- bounds -------------------------------------------------------------------------------


async def test_limits_report_the_storage_bounds(settings: Settings) -> None:
    chosen = settings.model_copy(
        update={
            "max_artifacts_per_task": 7,
            "owner_max_artifact_mb": 12.5,
            "artifact_upload_ttl_seconds": 90,
        }
    )
    async with run_api(chosen) as url:
        stack = await Stack.keyed(url, chosen)
        limits = (
            await stack.execute(
                "{ limits { maxArtifactsPerTask ownerMaxArtifactMb artifactUploadTtlSeconds } }"
            )
        )["limits"]
        async with httpx.AsyncClient() as client:
            plain = (await client.get(f"{url}/limits")).json()
    assert limits == {
        "maxArtifactsPerTask": 7,
        "ownerMaxArtifactMb": 12.5,
        "artifactUploadTtlSeconds": 90,
    }
    assert {k: plain[k] for k in limits} == limits


async def test_artifacts_per_task_are_bounded_and_open_uploads_count(settings: Settings) -> None:
    chosen = settings.model_copy(update={"max_artifacts_per_task": 2})
    async with run_api(chosen) as url:
        stack = await Stack.keyed(url, chosen)
        task_id = await submit(stack, {"echo": {"message": "x"}})
        await stack.execute(ATTACH, id=task_id, name="a.txt", data=_b64(10))
        await stack.execute(UPLOAD, id=task_id)  # an open upload takes the second place
        refused = [
            await _error(stack, ATTACH, id=task_id, name="c.txt", data=_b64(10)),
            await _error(stack, UPLOAD, id=task_id),
        ]
        other = await submit(stack, {"echo": {"message": "y"}})
        await stack.execute(ATTACH, id=other, name="a.txt", data=_b64(10))  # per task
        listed = (await stack.execute(ARTIFACTS, id=task_id))["task"]["artifacts"]
    for error in refused:
        assert error["extensions"]["code"] == "LIMIT_EXCEEDED", error
        assert "MAX_ARTIFACTS_PER_TASK (2)" in error["message"], error
    assert [a["name"] for a in listed] == ["a.txt"]


async def test_bytes_per_owner_are_bounded_and_concurrent_grants_cannot_race_past(
    settings: Settings,
) -> None:
    quota = int(0.01 * 1024 * 1024)  # OWNER_MAX_ARTIFACT_MB = 0.01: 10485 bytes
    chosen = settings.model_copy(
        update={"owner_max_artifact_mb": 0.01, "task_max_artifact_mb": 0.004}
    )
    async with run_api(chosen) as url:
        stack = await Stack.keyed(url, chosen)
        first, second = [await submit(stack, {"echo": {"message": str(i)}}) for i in range(2)]
        await stack.execute(ATTACH, id=first, name="a.bin", data=_b64(4000))
        await stack.execute(ATTACH, id=second, name="b.bin", data=_b64(4000))
        over = await _error(stack, ATTACH, id=second, name="c.bin", data=_b64(4000))
        other_owner = await Stack.keyed(url, chosen, owner="someone-else")
        theirs = await submit(other_owner, {"echo": {"message": "z"}})
        await other_owner.execute(ATTACH, id=theirs, name="a.bin", data=_b64(4000))

        # 2485 bytes are left: of 8 grants asked for at once, one reserves them
        grants = await asyncio.gather(
            *(stack.execute(UPLOAD, id=first) for _ in range(8)), return_exceptions=True
        )
        granted = [g["createArtifactUpload"] for g in grants if isinstance(g, dict)]
        refused = [g for g in grants if isinstance(g, TransportQueryError)]
        assert len(granted) == 1 and len(refused) == 7, grants
        for error in refused:
            assert error.errors is not None
            assert error.errors[0]["extensions"]["code"] == "LIMIT_EXCEEDED"
            assert "OWNER_MAX_ARTIFACT_MB" in error.errors[0]["message"]
        (upload,) = granted
        left = quota - 8000
        async with httpx.AsyncClient() as client:
            too_much = await client.put(upload["url"], content=b"y" * (left + 1))
            assert too_much.status_code == 413 and "OWNER_MAX_ARTIFACT_MB" in too_much.text
            assert (await client.put(upload["url"], content=b"y" * left)).status_code == 200
        done = (await stack.execute(COMPLETE, id=first, upload=upload["id"]))[
            "completeArtifactUpload"
        ]
        full = await _error(stack, ATTACH, id=first, name="d.bin", data=_b64(1))
    assert over["extensions"]["code"] == "LIMIT_EXCEEDED"
    assert "OWNER_MAX_ARTIFACT_MB (0.01 MB)" in over["message"], over
    assert done["size"] == left  # 10485 bytes stored: exactly the quota
    assert full["extensions"]["code"] == "LIMIT_EXCEEDED"


async def test_a_task_writing_past_the_owner_quota_fails_naming_the_setting(
    settings: Settings,
) -> None:
    chosen = settings.model_copy(update={"owner_max_artifact_mb": 0.001})
    async with run_api(chosen) as url, run_worker(chosen):
        stack = await Stack.keyed(url, chosen)
        task_id = await submit(stack, {"report": {"rows": 5000}})
        events = await finish(stack, task_id)
        task = (await stack.execute(ARTIFACTS, id=task_id))["task"]
    error = events[-1]["error"]
    assert events[-1]["status"] == "FAILED", events[-1]
    assert error["code"] == "LIMIT_EXCEEDED" and "OWNER_MAX_ARTIFACT_MB" in error["message"]
    assert task["artifacts"] == []  # nothing kept (the task's log is not a file)
    files = [p.name for p in (chosen.data_dir / "artifacts").rglob("*") if p.is_file()]
    assert files == []


async def test_a_task_writing_past_the_artifacts_per_task_fails_naming_the_setting(
    settings: Settings,
) -> None:
    chosen = settings.model_copy(update={"max_artifacts_per_task": 1})
    async with run_api(chosen) as url:
        stack = await Stack.keyed(url, chosen)
        task_id = await submit(stack, {"report": {"rows": 10}})
        await stack.execute(ATTACH, id=task_id, name="input.csv", data=_b64(10))
        async with run_worker(chosen):
            events = await finish(stack, task_id)
    error = events[-1]["error"]
    assert events[-1]["status"] == "FAILED", events[-1]
    assert error["code"] == "LIMIT_EXCEEDED"
    assert "MAX_ARTIFACTS_PER_TASK (1)" in error["message"], error


# --- retryTask and the rate limit ---------------------------------------------------------


async def test_retry_task_counts_against_tasks_per_minute(settings: Settings) -> None:
    chosen = settings.model_copy(update={"tasks_per_minute": 2})
    async with run_api(chosen) as url:
        stack = await Stack.keyed(url, chosen)
        task_id = await submit(stack, {"echo": {"message": "x"}}, delaySeconds=600)  # 1
        await stack.execute(CANCEL, id=task_id)
        assert (await stack.execute(RETRY, id=task_id))["retryTask"]["status"] == "QUEUED"  # 2
        await stack.execute(CANCEL, id=task_id)
        async with httpx.AsyncClient() as client:
            response = await client.post(
                stack.graphql_url,
                json={"query": RETRY, "variables": {"id": task_id}},
                headers=stack.headers,
            )
    (error,) = response.json()["errors"]
    assert error["extensions"]["code"] == "RATE_LIMITED", error
    assert error["extensions"]["retryAfterSeconds"] >= 1
    assert response.status_code == 429 and int(response.headers["retry-after"]) >= 1


# --- downloads are attachments ------------------------------------------------------------


async def test_s3_download_links_ask_for_an_attachment(
    settings: Settings, s3_endpoint: str
) -> None:
    store = make_store(s3_settings(settings, s3_endpoint))
    key = f"{uuid.uuid4()}/{uuid.uuid4()}/page.html"
    try:
        await store.put(key, b"<script>alert(1)</script>", content_type="text/html", max_bytes=100)
        url = await store.download_url(key, 60)
        assert url is not None
        async with httpx.AsyncClient() as client:
            response = await client.get(url)
    finally:
        await store.aclose()
    assert "response-content-disposition=attachment" in url
    assert response.status_code == 200
    assert response.headers["content-disposition"] == 'attachment; filename="page.html"'


async def test_local_downloads_are_attachments_browsers_do_not_sniff(api: Stack) -> None:
    task_id = await submit(api, {"echo": {"message": "x"}})
    html = base64.b64encode(b"<script>alert(1)</script>").decode()
    attached = (await api.execute(ATTACH, id=task_id, name="page.html", data=html))[
        "attachArtifact"
    ]
    async with httpx.AsyncClient() as client:
        response = await client.get(attached["url"])
    assert response.status_code == 200
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-disposition"] == 'attachment; filename="page.html"'
