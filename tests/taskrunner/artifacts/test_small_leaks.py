"""Small leaks of the artifact links and names: a non-ASCII signature is
refused like any wrong one (403, not a 500), and `.` or `..` is no artifact name.
(Readiness, secrets in configuration errors and redaction in traces and access logs are in
test_observability and test_config.)"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from gql.transport.exceptions import TransportQueryError
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner.artifacts.records import add_artifact
from taskrunner.artifacts.signing import Signer
from taskrunner.artifacts.storage import make_store
from taskrunner.config import Settings
from taskrunner.errors import BadInput
from tests.support.artifacts import ATTACH, UPLOAD
from tests.support.stack import Stack
from tests.support.tasks import submit


def test_a_non_ascii_signature_is_simply_not_valid() -> None:
    signer = Signer(b"k")
    artifact_id = uuid.uuid4()
    expires = int(time.time()) + 60
    assert not signer.valid(artifact_id, expires, "é" * 64)
    assert not signer.valid(artifact_id, expires, "\udcff")  # a lone surrogate, too


async def test_a_link_with_a_non_ascii_signature_is_refused_with_403(api: Stack) -> None:
    task_id = await submit(api, {"echo": {"message": "x"}})
    attached = (await api.execute(ATTACH, id=task_id, name="a.txt", data="YWJj"))["attachArtifact"]
    upload = (await api.execute(UPLOAD, id=task_id))["createArtifactUpload"]
    download = attached["url"].split("signature=")[0] + "signature=%C3%A9"
    put = upload["url"].split("signature=")[0] + "signature=%E2%9C%93"
    async with httpx.AsyncClient() as client:
        assert (await client.get(attached["url"])).status_code == 200
        refused = await client.get(download)
        refused_put = await client.put(put, content=b"abc")
    assert refused.status_code == 403, refused.text
    assert "invalid" in refused.text
    assert refused_put.status_code == 403, refused_put.text


@pytest.mark.parametrize("name", [".", ".."])
async def test_dot_names_are_bad_input_naming_the_field(api: Stack, name: str) -> None:
    task_id = await submit(api, {"echo": {"message": "x"}})
    for query, variables in [
        (ATTACH, {"id": task_id, "name": name, "data": "YWJj"}),
        (UPLOAD.replace('name: "big.bin"', f'name: "{name}"'), {"id": task_id}),
    ]:
        with pytest.raises(TransportQueryError) as err:
            await api.execute(query, **variables)
        assert err.value.errors is not None
        (error,) = err.value.errors
        assert error["extensions"] == {"code": "BAD_INPUT", "field": "name"}, error
        assert error["message"].startswith("name: ") and repr(name) in error["message"]


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.require_redis_url())
    yield client
    await client.aclose()


@pytest.mark.parametrize("name", [".", ".."])
async def test_a_task_storing_a_dot_name_gets_bad_input(
    settings: Settings, engine: AsyncEngine, redis: Redis, api: Stack, name: str
) -> None:
    task_id = uuid.UUID(await submit(api, {"echo": {"message": "x"}}))
    store = make_store(settings)
    with pytest.raises(BadInput, match=r"^name: "):
        await add_artifact(
            engine=engine,
            redis=redis,
            store=store,
            task_id=task_id,
            name=name,
            data=b"abc",
            content_type="text/plain",
            max_bytes=100,
        )
    root = settings.data_dir / "artifacts"
    assert not root.exists() or [p for p in root.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize(
    "content_type", ["text/plain\r\nSet-Cookie: a=b", "not a type", "text/" + "x" * 300, ""]
)
async def test_a_content_type_that_is_no_media_type_is_bad_input(
    api: Stack, content_type: str
) -> None:
    """The content type is sent back as a header on download: a CR/LF in it would split the
    response (or crash it), so only `type/subtype` with parameters is taken."""
    task_id = await submit(api, {"echo": {"message": "x"}})
    with pytest.raises(TransportQueryError) as err:
        await api.execute(
            ATTACH.replace("$data: String!)", "$data: String!, $ct: String!)").replace(
                'contentType: "text/plain"', "contentType: $ct"
            ),
            id=task_id,
            name="a.txt",
            data="YWJj",
            ct=content_type,
        )
    assert err.value.errors is not None
    (error,) = err.value.errors
    assert error["extensions"] == {"code": "BAD_INPUT", "field": "contentType"}, error
    task = await api.execute("query($id: ID!) { task(id: $id) { artifacts { id } } }", id=task_id)
    assert task["task"]["artifacts"] == []
