"""Errors inside a subscription reach websocket clients classified like HTTP errors: a code
and a message, never SQL, parameters, host names or a traceback; the server logs the
unexpected ones under the incident id the client is shown."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import sqlalchemy as sa
from gql import Client, GraphQLRequest
from gql.transport.exceptions import TransportQueryError
from gql.transport.websockets import WebsocketsTransport
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.stack import Stack
from tests.support.tasks import WATCH, submit

OWNER_WATCH = "subscription($after: String) { tasksUpdates(after: $after) { cursor taskId } }"
EVENTS = "query($id: ID!) { task(id: $id) { events { cursor } } }"
# what must never reach a client: the statement, its table, the driver, the server's socket
LEAKS = ("SELECT", "task_event", "relation", "asyncpg", "sqlalchemy", "Traceback", "/tmp", "[SQL")


def _transport(stack: Stack, protocol: str) -> WebsocketsTransport:
    subprotocols = [protocol] if protocol == WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL else None
    return WebsocketsTransport(
        url=stack.ws_url, subprotocols=subprotocols, init_payload=dict(stack.headers)
    )


async def _error_mid_stream(
    stack: Stack, engine: AsyncEngine, protocol: str, query: str, variables: dict[str, Any]
) -> dict[str, Any]:
    """Open the subscription, take its first event, then make PostgreSQL refuse its next
    read (the table is renamed away) and return the error the client gets."""
    async with Client(transport=_transport(stack, protocol)) as session:
        agen = session.subscribe(GraphQLRequest(query, variable_values=variables or None))
        try:
            await asyncio.wait_for(anext(agen), 10)
            async with engine.begin() as conn:
                await conn.execute(sa.text("ALTER TABLE task_event RENAME TO task_event_gone"))
            with pytest.raises(TransportQueryError) as err:  # the next quiet re-read fails
                await asyncio.wait_for(anext(agen), 10)
        finally:
            await agen.aclose()
    assert err.value.errors
    (error,) = err.value.errors
    assert isinstance(error, dict)
    return error


@pytest.mark.parametrize(
    "protocol",
    [WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL, WebsocketsTransport.APOLLO_SUBPROTOCOL],
    ids=["graphql-transport-ws", "graphql-ws"],
)
@pytest.mark.parametrize("which", ["taskUpdates", "tasksUpdates"])
async def test_a_database_failure_mid_stream_reaches_the_client_classified_and_is_logged(
    api: Stack,
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
    protocol: str,
    which: str,
) -> None:
    first = await submit(api, {"echo": {"message": "first"}})
    await submit(api, {"echo": {"message": "second"}})
    if which == "taskUpdates":
        query, variables = WATCH, {"id": first}
    else:  # resumed after the first task's event: the second's arrives, then the failure
        events = (await api.execute(EVENTS, id=first))["task"]["events"]
        query, variables = OWNER_WATCH, {"after": events[0]["cursor"]}
    with caplog.at_level(logging.ERROR):
        error = await _error_mid_stream(api, engine, protocol, query, variables)
    text = repr(error)
    assert not [leak for leak in LEAKS if leak in text], text
    assert error["extensions"]["code"] in ("INTERNAL", "UNAVAILABLE"), error
    if error["extensions"]["code"] == "INTERNAL":
        incident = error["extensions"]["incident"]
        assert incident in error["message"]
        logged = [r for r in caplog.records if incident in r.getMessage()]
        assert logged and logged[0].exc_info is not None  # the traceback stays on the server
