"""Artifacts: streamed into the store with size and sha256, refused past the limit without
leftovers, listed and downloadable through signed, expiring links with Range support."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from gql.transport.exceptions import TransportQueryError
from sqlalchemy.ext.asyncio import AsyncEngine

from api.app import create_app
from api.context import Services
from taskrunner.artifacts.local import LocalStore
from taskrunner.artifacts.records import delete_expired
from taskrunner.artifacts.s3 import S3Store
from taskrunner.artifacts.signing import Signer
from taskrunner.artifacts.storage import ArtifactStore, make_store
from taskrunner.artifacts.streams import ArtifactTooLarge
from taskrunner.config import Settings
from taskrunner.embedded import free_port
from tests.support.artifacts import ARTIFACTS, ATTACH, COMPLETE, UPLOAD, s3_settings, store_keys
from tests.support.environment import process_env
from tests.support.processes import spawn, stop, wait_ready, worker_process
from tests.support.rows import wait_for
from tests.support.servers import run_api, run_worker
from tests.support.stack import Stack
from tests.support.tasks import finish, submit


async def _chunks(n: int, size: int) -> AsyncIterator[bytes]:
    for i in range(n):
        yield bytes([i % 256]) * size


# --- the store ------------------------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
async def store(
    request: pytest.FixtureRequest, settings: Settings, s3_endpoint: str
) -> AsyncIterator[ArtifactStore]:
    """Each store kind, for the one suite both must pass."""
    chosen = s3_settings(settings, s3_endpoint) if request.param == "s3" else settings
    store = make_store(chosen)
    yield store
    await store.aclose()


@pytest.mark.parametrize(
    "data",
    [b"hello", "path", "chunks"],
    ids=["bytes", "path", "async-iterator"],
)
async def test_the_store_keeps_bytes_with_their_size_and_sha256(
    store: LocalStore, tmp_path: Path, data: object
) -> None:
    expected = b"".join([bytes([i % 256]) * 1000 for i in range(50)])
    source: object
    if data == "path":
        source = tmp_path / "in.bin"
        source.write_bytes(expected)
    elif data == "chunks":
        source = _chunks(50, 1000)
    else:
        source = expected = b"hello"
    stored = await store.put("t/a/file.bin", source, content_type="x", max_bytes=10**6)  # type: ignore[arg-type]
    assert stored.size == len(expected)
    assert stored.sha256 == hashlib.sha256(expected).hexdigest()
    assert await store.exists("t/a/file.bin")
    assert await store_keys(store) == ["t/a/file.bin"]
    await store.delete("t/a/file.bin")
    assert not await store.exists("t/a/file.bin")


async def test_the_store_refuses_past_the_limit_and_keeps_nothing(store: ArtifactStore) -> None:
    with pytest.raises(ArtifactTooLarge, match="TASK_MAX_ARTIFACT_MB"):
        await store.put("t/a/big.bin", _chunks(10, 1000), content_type="x", max_bytes=5000)
    assert not await store.exists("t/a/big.bin")
    assert await store_keys(store) == []


async def test_a_multipart_upload_over_the_limit_is_aborted(
    settings: Settings, s3_endpoint: str
) -> None:
    store = make_store(s3_settings(settings, s3_endpoint))
    assert isinstance(store, S3Store)
    try:
        parts = S3Store.PART_BYTES // (1024 * 1024)
        with pytest.raises(ArtifactTooLarge):  # the limit falls in the third part
            await store.put(
                "t/a/huge.bin",
                _chunks(3 * parts, 1024 * 1024),
                content_type="x",
                max_bytes=(2 * parts + 1) * 1024 * 1024,
            )
        assert await store_keys(store) == []
        stored = await store.put(
            "t/a/two-parts.bin", _chunks(parts + 1, 1024 * 1024), content_type="x",
            max_bytes=10**9,
        )  # fmt: skip
        assert stored.size == (parts + 1) * 1024 * 1024
        url = await store.download_url("t/a/two-parts.bin", 60)
        assert url is not None
        async with httpx.AsyncClient() as client:
            body = (await client.get(url)).content
        assert hashlib.sha256(body).hexdigest() == stored.sha256
    finally:
        await store.aclose()


def test_a_key_cannot_escape_the_local_store(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="escapes"):
        LocalStore(tmp_path).path("../outside")


async def test_the_api_serves_the_files_of_a_local_store_only(store: ArtifactStore) -> None:
    await store.put("t/a/x.txt", b"x", content_type="text/plain", max_bytes=10)
    served = store.served_file("t/a/x.txt")
    if isinstance(store, LocalStore):  # signed links to the api, which sends this file
        assert served is not None and served.read_bytes() == b"x"
        assert await store.download_url("t/a/x.txt", 60) is None
    else:  # presigned links to the bucket; the api serves nothing
        assert served is None
        assert await store.download_url("t/a/x.txt", 60) is not None


def test_signatures_expire_and_cannot_be_changed() -> None:
    signer = Signer(b"k")
    artifact_id = uuid.uuid4()
    future = int(time.time()) + 60
    good = signer.signature(artifact_id, future)
    assert signer.valid(artifact_id, future, good)
    assert not signer.valid(artifact_id, future + 1, good)  # expiry changed
    assert not signer.valid(uuid.uuid4(), future, good)  # another artifact
    changed = good[:-1] + ("1" if good[-1] == "0" else "0")  # always a different signature
    assert not signer.valid(artifact_id, future, changed)
    assert not signer.valid(artifact_id, future, good, "upload")  # another purpose
    past = int(time.time()) - 1
    assert not signer.valid(artifact_id, past, signer.signature(artifact_id, past))


# --- through the service --------------------------------------------------------------


async def test_a_report_artifact_is_listed_announced_and_downloadable(stack: Stack) -> None:
    task_id = await submit(stack, {"report": {"rows": 5000}})
    events = await finish(stack, task_id)
    assert events[-1]["status"] == "SUCCEEDED"
    task = (await stack.execute(ARTIFACTS, id=task_id))["task"]
    (artifact,) = task["artifacts"]
    assert artifact["name"] == "report.csv" and artifact["contentType"] == "text/csv"
    async with httpx.AsyncClient() as client:
        log = (await client.get(task["logsUrl"])).text  # it logged nothing: the runner did
        assert "INFO    stored artifact report.csv (" in log, log
        assert "INFO    attempt 1 succeeded in " in log, log
        whole = await client.get(artifact["url"])
        assert whole.status_code == 200
        assert whole.headers["content-type"].startswith("text/csv")
        assert int(whole.headers["content-length"]) == artifact["size"]
        assert hashlib.sha256(whole.content).hexdigest() == artifact["sha256"]
        lines = whole.text.splitlines()
        assert lines[0] == "n,square,sqrt" and len(lines) == 5001
        assert lines[-1].startswith("5000,25000000,")
        part = await client.get(artifact["url"], headers={"Range": "bytes=0-13"})
        assert part.status_code == 206 and part.content == b"n,square,sqrt\n"
        tampered = artifact["url"].replace("signature=", "signature=0")
        assert (await client.get(tampered)).status_code == 403
        expired = artifact["url"].split("?")[0] + "?expires=1&signature=x"
        assert (await client.get(expired)).status_code == 403


async def test_an_expired_link_is_refused(settings: Settings) -> None:
    app = create_app(settings)
    async with run_api(settings, app) as url, run_worker(settings):
        services: Services = app.state.services
        now = time.time()  # the api's clock, moved by the test
        services.signer = Signer(services.signer.key, clock=lambda: now)
        stack = await Stack.keyed(url, settings)
        task_id = await submit(stack, {"report": {"rows": 10}})
        await finish(stack, task_id)
        (artifact,) = (await stack.execute(ARTIFACTS, id=task_id))["task"]["artifacts"]
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(artifact["url"]).query)
        expires = int(query["expires"][0])
        assert expires >= now + settings.artifact_url_ttl_seconds
        async with httpx.AsyncClient() as client:
            now = expires  # its last moment
            assert (await client.get(artifact["url"])).status_code == 200
            now = expires + 0.001
            assert (await client.get(artifact["url"])).status_code == 403


async def test_a_timed_out_task_keeps_its_log_with_the_lines_before_the_kill(
    stack: Stack,
) -> None:
    task_id = await submit(
        stack,
        {"chatter": {"progressSteps": 0, "logLines": 1000, "intervalSeconds": 0.05}},
        timeoutSeconds=1,
    )
    events = await finish(stack, task_id)
    assert events[-1]["status"] == "FAILED" and events[-1]["error"]["code"] == "TIMEOUT"
    task = (await stack.execute(ARTIFACTS, id=task_id))["task"]
    assert task["logsUrl"] is not None
    async with httpx.AsyncClient() as client:
        log = (await client.get(task["logsUrl"])).text
    assert "INFO    line 1 of 1000\n" in log
    assert "task_killed" in log
    assert "line 1000 of 1000" not in log


async def test_an_artifact_over_the_limit_fails_the_task_and_leaves_no_object(
    settings: Settings,
) -> None:
    small = settings.model_copy(update={"task_max_artifact_mb": 0.01})
    async with run_api(small) as url, run_worker(small):
        stack = await Stack.keyed(url, small)
        task_id = await submit(stack, {"report": {"rows": 5000}})
        events = await finish(stack, task_id)
        task = (await stack.execute(ARTIFACTS, id=task_id))["task"]
    assert events[-1]["status"] == "FAILED"
    assert events[-1]["error"]["code"] == "LIMIT_EXCEEDED"
    assert task["artifacts"] == []
    lines = [e["line"] for e in events if e.get("line")]
    assert any(line.startswith("artifact_rejected: report.csv") for line in lines)
    files = [p.name for p in (small.data_dir / "artifacts").rglob("*") if p.is_file()]
    assert files == []


async def test_with_s3_the_artifact_link_is_a_presigned_url(
    settings: Settings, s3_endpoint: str
) -> None:
    on_s3 = s3_settings(settings, s3_endpoint)
    async with run_api(on_s3) as url, run_worker(on_s3):
        stack = await Stack.keyed(url, on_s3)
        task_id = await submit(stack, {"report": {"rows": 2000}})
        assert (await finish(stack, task_id))[-1]["status"] == "SUCCEEDED"
        (artifact,) = (await stack.execute(ARTIFACTS, id=task_id))["task"]["artifacts"]
    assert artifact["url"].startswith(f"http://{s3_endpoint}/{on_s3.minio_bucket}/")
    assert "X-Amz-Signature=" in artifact["url"]
    async with httpx.AsyncClient() as client:
        body = (await client.get(artifact["url"])).content
    assert hashlib.sha256(body).hexdigest() == artifact["sha256"]
    assert len(body) == artifact["size"]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def test_a_50_mb_artifact_streams_in_bounded_memory(settings: Settings) -> None:
    """The worker writes it and the api serves it, each growing by < 20 MB."""
    port = free_port()
    env = process_env(settings, PORT=str(port))
    api = await spawn("api", env=env)
    worker = await spawn("worker", env=env)
    stack = await Stack.keyed(f"http://127.0.0.1:{port}", settings)
    peaks = {"api": 0.0, "worker": 0.0}

    async def sample() -> None:
        while True:
            peaks["api"] = max(peaks["api"], _rss_mb(api.pid))
            peaks["worker"] = max(peaks["worker"], _rss_mb(worker.pid))
            await asyncio.sleep(0.02)

    try:
        await wait_ready(stack.url, api)
        async with httpx.AsyncClient(timeout=60) as client:

            async def report(rows: int) -> dict[str, object]:
                task_id = await submit(stack, {"report": {"rows": rows}})
                assert (await finish(stack, task_id, within=120))[-1]["status"] == "SUCCEEDED"
                (artifact,) = (await stack.execute(ARTIFACTS, id=task_id))["task"]["artifacts"]
                return dict(artifact)

            async def download(url: str) -> tuple[int, str]:
                sha, size = hashlib.sha256(), 0
                async with client.stream("GET", url) as response:
                    async for chunk in response.aiter_bytes():
                        sha.update(chunk)
                        size += len(chunk)
                return size, sha.hexdigest()

            warm = await report(100)  # imports, pools and caches settle first
            await download(str(warm["url"]))
            base = {"api": _rss_mb(api.pid), "worker": _rss_mb(worker.pid)}
            sampler = asyncio.create_task(sample())
            big = await report(1_600_000)
            size, sha = await download(str(big["url"]))
            sampler.cancel()
    finally:
        for proc in (api, worker):
            await stop(proc)
    assert size == big["size"] and size > 50_000_000
    assert sha == big["sha256"]
    growth = {k: round(peaks[k] - base[k], 1) for k in base}
    assert growth["worker"] < 20, growth
    assert growth["api"] < 20, growth


async def test_a_client_attaches_a_file_to_a_waiting_task(api: Stack) -> None:
    task_id = await submit(api, {"echo": {"message": "x"}})
    payload = b"input for the task\n" * 100
    attached = (
        await api.execute(
            ATTACH, id=task_id, name="input.txt", data=base64.b64encode(payload).decode()
        )
    )["attachArtifact"]
    assert attached["size"] == len(payload)
    assert attached["sha256"] == hashlib.sha256(payload).hexdigest()
    async with httpx.AsyncClient() as client:
        assert (await client.get(attached["url"])).content == payload
    listed = (await api.execute(ARTIFACTS, id=task_id))["task"]["artifacts"]
    assert [a["name"] for a in listed] == ["input.txt"]


@pytest.mark.parametrize(
    ("case", "code"),
    [("bad-base64", "BAD_INPUT"), ("unknown-task", "NOT_FOUND"), ("finished", "CONFLICT")],
)  # fmt: skip
async def test_attaching_refuses_clearly(
    stack: Stack, engine: AsyncEngine, case: str, code: str
) -> None:
    task_id = await submit(stack, {"echo": {"message": "x"}})
    await finish(stack, task_id)
    data = base64.b64encode(b"abc").decode()
    variables = {"id": task_id, "name": "f.txt", "data": data}
    if case == "bad-base64":
        variables["data"] = "%%%"
    elif case == "unknown-task":
        variables["id"] = str(uuid.uuid4())
    with pytest.raises(TransportQueryError) as err:
        await stack.execute(ATTACH, **variables)
    assert err.value.errors is not None
    assert err.value.errors[0]["extensions"]["code"] == code, err.value.errors
    async with engine.connect() as conn:
        assert await conn.scalar(sa.text("SELECT count(*) FROM artifact")) == 0


async def test_expired_artifacts_are_deleted_with_their_bytes(
    stack: Stack, engine: AsyncEngine
) -> None:
    task_id = await submit(stack, {"report": {"rows": 10}})
    await finish(stack, task_id)
    store = make_store(stack.settings)
    assert isinstance(store, LocalStore)
    assert len(await store_keys(store)) == 1
    assert await delete_expired(engine, store, timedelta(days=1)) == 0  # too young
    assert await delete_expired(engine, store, timedelta(0)) == 1
    assert await store_keys(store) == []
    assert (await stack.execute(ARTIFACTS, id=task_id))["task"]["artifacts"] == []


async def test_attaching_over_the_limit_is_limit_exceeded(settings: Settings) -> None:
    small = settings.model_copy(update={"task_max_artifact_mb": 0.001})
    async with run_api(small) as url:
        stack = await Stack.keyed(url, small)
        task_id = await submit(stack, {"echo": {"message": "x"}})
        data = base64.b64encode(b"x" * 2000).decode()
        with pytest.raises(TransportQueryError) as err:
            await stack.execute(ATTACH, id=task_id, name="big.bin", data=data)
    assert err.value.errors is not None
    assert err.value.errors[0]["extensions"] == {"code": "LIMIT_EXCEEDED", "field": "dataBase64"}


@pytest.mark.parametrize("kind", ["local", "s3"])
async def test_a_large_upload_goes_to_a_put_url_then_is_completed(
    settings: Settings, s3_endpoint: str, kind: str
) -> None:
    chosen = s3_settings(settings, s3_endpoint) if kind == "s3" else settings
    payload = b"".join(bytes([i % 251]) * 65536 for i in range(80))  # 5 MB
    async with run_api(chosen) as url:
        stack = await Stack.keyed(url, chosen)
        task_id = await submit(stack, {"echo": {"message": "x"}})
        upload = (await stack.execute(UPLOAD, id=task_id))["createArtifactUpload"]
        assert upload["method"] == "PUT"
        if kind == "s3":
            assert upload["url"].startswith(f"http://{s3_endpoint}/")
        else:
            assert upload["url"].startswith(f"{url}/artifacts/uploads/")
        async with httpx.AsyncClient(timeout=30) as client:
            put = await client.put(upload["url"], content=payload)
            assert put.status_code == 200, put.text
            artifact = (await stack.execute(COMPLETE, id=task_id, upload=upload["id"]))[
                "completeArtifactUpload"
            ]
            body = (await client.get(artifact["url"])).content
    assert artifact["size"] == len(payload) and body == payload
    assert artifact["sha256"] == hashlib.sha256(payload).hexdigest()
    assert artifact["contentType"] == "application/x-test"


async def test_a_local_upload_over_the_limit_is_refused_and_a_download_link_cannot_upload(
    settings: Settings,
) -> None:
    small = settings.model_copy(update={"task_max_artifact_mb": 0.01})
    async with run_api(small) as url:
        stack = await Stack.keyed(url, small)
        task_id = await submit(stack, {"echo": {"message": "x"}})
        upload = (await stack.execute(UPLOAD, id=task_id))["createArtifactUpload"]
        async with httpx.AsyncClient() as client:
            too_big = await client.put(upload["url"], content=b"x" * 20000)
            assert too_big.status_code == 413 and "TASK_MAX_ARTIFACT_MB" in too_big.text
            as_download = upload["url"].replace("/artifacts/uploads/", "/artifacts/")
            assert (await client.get(as_download)).status_code == 403
        with pytest.raises(TransportQueryError) as err:
            await stack.execute(COMPLETE, id=task_id, upload=upload["id"])
    assert err.value.errors is not None
    assert err.value.errors[0]["extensions"]["code"] == "CONFLICT"  # nothing was stored
    assert [p for p in (small.data_dir / "artifacts").rglob("*") if p.is_file()] == []


async def test_a_task_whose_worker_died_keeps_its_log(api: Stack, engine: AsyncEngine) -> None:
    task_id = await submit(
        api, {"chatter": {"progressSteps": 0, "logLines": 1000, "intervalSeconds": 0.05}}
    )
    async with worker_process(api.settings) as victim:
        await wait_for(
            engine,
            f"SELECT count(*) >= 5 FROM task_event WHERE task_id = '{task_id}' AND kind = 'log'",
            True,
        )
        victim.kill()
        await victim.wait()
    async with run_worker(api.settings):
        events = await finish(api, task_id)
    assert events[-1]["status"] == "FAILED" and events[-1]["error"]["code"] == "WORKER_LOST"
    task = (await api.execute(ARTIFACTS, id=task_id))["task"]
    async with httpx.AsyncClient() as client:
        log = (await client.get(task["logsUrl"])).text
    assert "INFO    line 1 of 1000\n" in log
    assert "ERROR   attempt 1 failed with WORKER_LOST: " in log, log


async def test_artifact_links_in_a_subscription_are_http_links(stack: Stack) -> None:
    task_id = await submit(stack, {"report": {"rows": 5}})
    events = await stack.subscribe(
        "subscription($id: ID!) { taskUpdates(id: $id) { "
        "... on ArtifactAdded { artifact { name url } } } }",
        id=task_id,
    )
    (added,) = [e["taskUpdates"]["artifact"] for e in events if e["taskUpdates"]]
    assert added["url"].startswith(f"{stack.url}/artifacts/")  # not ws://
    async with httpx.AsyncClient() as client:
        assert (await client.get(added["url"])).text.startswith("n,square,sqrt\n")
