"""API keys and tenants: every task belongs to an owner; callers see only their own,
admins see all; revoked keys are refused and their websockets closed."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from gql import Client, GraphQLRequest
from gql.transport.exceptions import TransportError, TransportQueryError
from gql.transport.websockets import WebsocketsTransport
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from api.app import create_app
from api.auth import Authenticator
from taskrunner import keys
from taskrunner.config import Settings
from taskrunner.db import create_engine
from taskrunner.keys import Principal
from tests.support.environment import process_env
from tests.support.pg_proxy import HoldingProxy
from tests.support.processes import keys_cli
from tests.support.servers import run_api
from tests.support.stack import Stack, make_key
from tests.support.subscriptions import close_code
from tests.support.tasks import WATCH, submit
from tests.support.waiting import eventually

TASK = "query($id: ID!) { task(id: $id) { id status } }"
LIST = "{ tasks(first: 100) { edges { node { id } } } }"
CANCEL = "mutation($id: ID!) { cancelTask(id: $id) { id status } }"
RETRY = "mutation($id: ID!) { retryTask(id: $id) { id status } }"
ATTACH = """
mutation($id: ID!) {
  attachArtifact(taskId: $id, name: "secret.txt", dataBase64: "c2VjcmV0") { id url }
}"""
ARTIFACTS = "query($id: ID!) { task(id: $id) { artifacts { id url } } }"
ALL = "subscription { tasksUpdates { taskId ... on StatusChanged { status } } }"


async def _error(stack: Stack, query: str, **variables: Any) -> dict[str, Any]:
    with pytest.raises(TransportQueryError) as err:
        await stack.execute(query, **variables)
    assert err.value.errors
    return err.value.errors[0]


async def _ids(stack: Stack) -> set[str]:
    return {e["node"]["id"] for e in (await stack.execute(LIST))["tasks"]["edges"]}


async def test_an_owner_cannot_see_or_touch_another_owners_tasks_but_an_admin_can(
    api: Stack,
) -> None:
    alice = api  # the fixture's key, owner "tester"
    bob = api.as_key(await make_key(api.settings, "bob"))
    admin = api.as_key(await make_key(api.settings, "root", admin=True))
    mine = await submit(alice, {"echo": {"message": "alice's"}})
    theirs = await submit(bob, {"sleep": {"seconds": 30}})
    failed = await submit(bob, {"echo": {"message": "to cancel"}})
    url = (await bob.execute(ATTACH, id=theirs))["attachArtifact"]["url"]

    # alice: bob's tasks do not exist for her
    assert (await alice.execute(TASK, id=theirs))["task"] is None
    assert await _ids(alice) == {mine}
    for query in (CANCEL, RETRY):
        error = await _error(alice, query, id=theirs)
        assert error["extensions"]["code"] == "NOT_FOUND"
    with pytest.raises(TransportQueryError) as err:
        await alice.subscribe(WATCH, id=theirs, within=10)
    assert err.value.errors and err.value.errors[0]["extensions"]["code"] == "NOT_FOUND"
    assert (await _error(alice, ATTACH, id=theirs))["extensions"]["code"] == "NOT_FOUND"
    async with httpx.AsyncClient() as client:
        # the signed link works on its own (a browser follows it without headers), but
        # not with another owner's key, and never with a bad key
        assert (await client.get(url, headers=alice.headers)).status_code == 404
        assert (await client.get(url, headers={"Authorization": "Bearer nope"})).status_code == 401
        assert (await client.get(url)).status_code == 200
        # bob's own key and the admin's are fine
        assert (await client.get(url, headers=bob.headers)).content == b"secret"
        assert (await client.get(url, headers=admin.headers)).content == b"secret"

    # the admin sees and acts on every owner's tasks
    assert await _ids(admin) == {mine, theirs, failed}
    assert (await admin.execute(TASK, id=theirs))["task"]["id"] == theirs
    (artifact,) = (await admin.execute(ARTIFACTS, id=theirs))["task"]["artifacts"]
    assert artifact["url"]
    cancelled = (await admin.execute(CANCEL, id=theirs))["cancelTask"]
    assert cancelled["status"] == "CANCELLED"
    events = await admin.subscribe(WATCH, id=theirs, within=10)
    statuses = [e["taskUpdates"]["status"] for e in events if "status" in e["taskUpdates"]]
    assert statuses == ["QUEUED", "CANCELLED"]
    retried = (await admin.execute(RETRY, id=theirs))["retryTask"]
    assert retried["status"] == "QUEUED"
    # ...while bob still sees only his own
    assert await _ids(bob) == {theirs, failed}


async def test_tasks_updates_carry_only_the_callers_events(api: Stack) -> None:
    bob = api.as_key(await make_key(api.settings, "bob"))
    admin = api.as_key(await make_key(api.settings, "root", admin=True))
    alice_watch = asyncio.create_task(api.subscribe(ALL, limit=1, within=15))
    admin_watch = asyncio.create_task(admin.subscribe(ALL, limit=2, within=15))
    await asyncio.sleep(0.5)
    theirs = await submit(bob, {"echo": {"message": "bob"}})
    mine = await submit(api, {"echo": {"message": "alice"}})
    (got,) = await alice_watch
    assert got["tasksUpdates"]["taskId"] == mine
    assert [e["tasksUpdates"]["taskId"] for e in await admin_watch] == [theirs, mine]


async def test_requests_without_a_valid_key_are_refused_clearly(api: Stack) -> None:
    query = {"query": "{ taskTypes { name } }"}
    async with httpx.AsyncClient(base_url=api.url) as client:
        none = await client.post("/graphql", json=query)
        bad = await client.post("/graphql", json=query, headers={"Authorization": "Bearer x"})
        sse = await client.get("/graphql/stream", params={"query": "subscription { x }"})
        page = await client.get("/graphql", headers={"Accept": "text/html"})
        fine = await client.post("/graphql", json=query, headers=api.headers)
    for response in (none, bad, sse):
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        (error,) = response.json()["errors"]
        assert error["extensions"]["code"] == "UNAUTHENTICATED"
        assert "Authorization: Bearer <key>" in error["message"]
    assert none.json()["errors"][0]["message"].startswith("no API key")
    assert bad.json()["errors"][0]["message"].startswith("the API key is unknown or revoked")
    assert page.status_code == 200  # GraphiQL loads; the key goes in its Headers tab
    assert fine.status_code == 200 and fine.json()["data"]["taskTypes"]
    # a websocket without a key in connection_init is closed before any subscription
    with pytest.raises(TransportError) as closed:
        await api.as_key(None).subscribe(ALL, within=10)
    assert close_code(closed.value) == 4403


async def test_a_revoked_key_is_refused_and_its_open_subscriptions_closed_within_5s(
    api: Stack,
) -> None:
    assert (await api.execute("{ limits { maxBatchSize } }"))["limits"]
    other = api.as_key(await make_key(api.settings, "other"))
    watching = asyncio.create_task(api.subscribe(ALL, within=30))
    streaming = asyncio.create_task(_sse_lines(api, ALL))
    unaffected = asyncio.create_task(other.subscribe(ALL, limit=1, within=30))
    await asyncio.sleep(0.5)
    code, out, _ = await keys_cli(process_env(api.settings), "revoke", await _name_of(api))
    assert code == 0 and out.startswith("revoked ")
    started = asyncio.get_running_loop().time()
    with pytest.raises(TransportError) as closed:
        await asyncio.wait_for(watching, 5)
    assert close_code(closed.value) == 4403
    assert asyncio.get_running_loop().time() - started < 5
    # a Server-Sent Events stream ends too, saying why
    lines = await asyncio.wait_for(streaming, 5)
    assert lines[-2:] == ["event: complete", "data: "]
    assert any('"code":"UNAUTHENTICATED"' in line for line in lines)
    async with httpx.AsyncClient(base_url=api.url) as client:
        response = await client.post("/graphql", json={"query": LIST}, headers=api.headers)
    assert response.status_code == 401
    assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    with pytest.raises(TransportError) as closed:
        await api.subscribe(ALL, within=10)
    assert close_code(closed.value) == 4403
    # other keys keep working, their subscriptions too
    task_id = await submit(other, {"echo": {"message": "still here"}})
    (event,) = await unaffected
    assert event["tasksUpdates"]["taskId"] == task_id


async def _sse_lines(stack: Stack, query: str) -> list[str]:
    """The lines of a Server-Sent Events subscription, until the server ends it."""
    lines: list[str] = []
    async with (
        httpx.AsyncClient(base_url=stack.url, timeout=30, headers=stack.headers) as client,
        client.stream("GET", "/graphql/stream", params={"query": query}) as response,
    ):
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.strip() and not line.startswith(":"):
                lines.append(line.strip() if line.strip() != "data:" else "data: ")
    return lines


async def _name_of(stack: Stack) -> str:
    """The name of the stack's key, from `keys list` (its prefix is shown)."""
    _, out, _ = await keys_cli(process_env(stack.settings), "list")
    assert stack.key is not None
    (line,) = [x for x in out.splitlines() if stack.key[:10] in x]
    return line.split()[0]


async def test_keys_cli_creates_lists_and_revokes(settings: Settings) -> None:
    env = process_env(settings)
    code, out, err = await keys_cli(env, "create", "ci", "--owner", "team-a", "--admin")
    assert code == 0 and "admin key 'ci'" in err and "shown only this once" in err
    secret = out.strip()
    assert secret.startswith("trk_") and len(secret) >= 40
    without_db = {k: v for k, v in env.items() if k != "DATABASE_URL"}
    # these change nothing: one process each, at once
    again, bad, listed, nobody, no_db = await asyncio.gather(
        keys_cli(env, "create", "ci"),
        keys_cli(env, "create", "bad name!"),
        keys_cli(env, "list"),
        keys_cli(env, "revoke", "nobody"),
        keys_cli(without_db, "list"),
    )
    code, _, err = again
    assert code == 1 and "a key named 'ci' exists" in err
    code, _, err = bad
    assert code == 1 and "name: 'bad name!' is not a valid name" in err
    code, out, _ = listed
    (row,) = [x for x in out.splitlines() if x.startswith("ci ")]
    assert row.split()[:4] == ["ci", "team-a", "admin", secret[:10] + "…"]
    assert secret not in out  # only its prefix is ever shown again
    code, _, err = nobody
    assert code == 1 and "no key named 'nobody'" in err
    code, _, err = no_db
    assert code == 2 and "DATABASE_URL is not set" in err
    assert (await keys_cli(env, "revoke", "ci"))[0] == 0
    code, out, _ = await keys_cli(env, "list")
    assert next(x for x in out.splitlines() if x.startswith("ci ")).split()[-1] != "-"


async def test_without_auth_everyone_is_one_owner_and_a_warning_is_logged(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    open_settings = settings.model_copy(update={"auth_disabled": True})
    with caplog.at_level("WARNING"):
        async with run_api(open_settings) as url:
            anonymous = Stack(url, open_settings)
            task_id = await submit(anonymous, {"echo": {"message": "open"}})
            assert await _ids(anonymous) == {task_id}
    assert any("AUTH_DISABLED=true" in r.getMessage() for r in caplog.records)


async def test_websocket_key_may_come_from_the_upgrade_header(api: Stack) -> None:
    task_id = await submit(api, {"echo": {"message": "header"}})
    transport = WebsocketsTransport(
        url=api.ws_url,
        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
        headers=api.headers,
    )
    async with Client(transport=transport) as session, asyncio.timeout(10):
        agen = session.subscribe(GraphQLRequest(WATCH, variable_values={"id": task_id}))
        first = await anext(agen)
        await agen.aclose()
    assert first["taskUpdates"]["status"] == "QUEUED"


async def test_the_database_keeps_only_a_hash_of_each_key(api: Stack) -> None:
    engine = create_engine(api.settings.require_database_url(), pool_size=1)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.text("SELECT * FROM api_key"))).mappings().all()
    finally:
        await engine.dispose()
    assert api.key is not None
    (row,) = rows
    assert row["hash"] == hashlib.sha256(api.key.encode()).hexdigest()
    assert all(api.key not in str(value) for value in row.values())


async def test_a_key_revoked_between_the_upgrade_and_connection_init_is_refused_there(
    settings: Settings,
) -> None:
    app = create_app(settings)
    async with run_api(settings, app) as url:
        stack = await Stack.keyed(url, settings)
        name = await _name_of(stack)
        authenticator: Authenticator = app.state.services.authenticator
        async with connect(
            stack.ws_url.replace("http", "ws"),
            subprotocols=[Subprotocol("graphql-transport-ws")],
            additional_headers=stack.headers,  # resolved at the upgrade: a live key then
        ) as ws:
            engine = create_engine(settings.require_database_url(), pool_size=1)
            try:
                revoked = await keys.revoke(engine, name)
            finally:
                await engine.dispose()

            principal = Principal(key_id=revoked.id, name=revoked.name, owner=revoked.owner)

            async def noticed() -> bool:
                """the api's watcher saw the revocation"""
                return authenticator.revoked(principal)

            await eventually(noticed, 5)
            await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
            with pytest.raises(ConnectionClosed) as closed:
                reply = await asyncio.wait_for(ws.recv(), 5)
                raise AssertionError(f"the revoked key was let in: {reply!r}")
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403


async def test_a_key_revoked_while_its_lookup_is_in_flight_is_not_cached_as_valid(
    settings: Settings,
) -> None:
    """The lookup's reply is held back (a slow network) until the revocation has committed
    and the api's watcher has seen it: the late answer must not be taken as valid."""
    name = "in-flight-key"
    secret = await make_key(settings, "tester", name=name)
    direct = create_engine(settings.require_database_url(), pool_size=1)
    async with HoldingProxy(settings.require_database_url()).running() as proxy:
        engine = create_engine(proxy.url, pool_size=2)
        slow_watch = settings.model_copy(update={"auth_recheck_seconds": 3600})
        authenticator = Authenticator(engine, slow_watch)
        await authenticator.start()
        try:
            proxy.hold(name.encode())  # the reply carrying the key's row
            lookup = asyncio.create_task(authenticator.principal(secret))
            await asyncio.wait_for(proxy.held.wait(), 5)  # it ran, before the revocation
            await keys.revoke(direct, name)
            await authenticator.check_revoked()  # the watcher's round sees it
            proxy.release()
            assert await asyncio.wait_for(lookup, 5) is None
            assert await authenticator.principal(secret) is None  # nor cached as valid
        finally:
            await authenticator.stop()
            await engine.dispose()
            await direct.dispose()


async def test_lookups_of_a_bogus_key_are_cached_briefly(settings: Settings) -> None:
    app = create_app(settings)
    async with run_api(settings, app) as url:
        stack = await Stack.keyed(url, settings)
        lookups: list[str] = []

        def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            if "api_key" in statement and "hash" in statement:
                lookups.append(statement)

        engine = app.state.services.engine
        sa.event.listen(engine.sync_engine, "before_cursor_execute", count)
        bogus = {"Authorization": "Bearer trk_" + "x" * 43}
        query = {"query": "{ limits { maxBatchSize } }"}
        async with httpx.AsyncClient(base_url=url) as client:
            answers = [await client.post("/graphql", json=query, headers=bogus) for _ in range(20)]
            assert {a.status_code for a in answers} == {401}
            assert len(lookups) <= 1, f"{len(lookups)} database lookups for one bogus key"
            # a real key is still looked up, and works
            fine = await client.post("/graphql", json=query, headers=stack.headers)
            assert fine.status_code == 200
        sa.event.remove(engine.sync_engine, "before_cursor_execute", count)
