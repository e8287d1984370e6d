"""How the generated operations (api.py) reach the server: HTTP POST for queries and
mutations, graphql-transport-ws for subscriptions, the API key on both; and the markers
api.py is generated to use (graphql.config.yaml names them)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, TypeVar

from gql import Client, GraphQLRequest
from gql.transport.exceptions import TransportQueryError
from gql.transport.httpx import HTTPXAsyncTransport
from gql.transport.websockets import WebsocketsTransport
from pydantic import BaseModel

Result = TypeVar("Result", bound=BaseModel)


class GraphQLDefault:
    """The schema's default of an input field, kept in its annotation: a field left unset
    is not sent, so the server applies it."""

    def __init__(self, value: object) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"GraphQLDefault({self.value!r})"


class UnsetType:
    """The type of UNSET: an argument the caller did not give is not sent at all (the
    server's default applies), which is not the same as sending null."""

    _instance: UnsetType | None = None

    def __new__(cls) -> UnsetType:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET = UnsetType()


class TaskrunnerError(Exception):
    """The server answered with a GraphQL error; `code` is its `extensions.code`
    (UNAUTHENTICATED, NOT_FOUND, CONFLICT, LIMIT_EXCEEDED, ...)."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(f"{code}: {message}" if code else message)
        self.code = code

    @classmethod
    def of(cls, error: TransportQueryError) -> TaskrunnerError:
        first: Any = (error.errors or [{}])[0]
        if not isinstance(first, dict):
            return cls(str(error))
        code = (first.get("extensions") or {}).get("code")
        return cls(str(first.get("message", error)), code if isinstance(code, str) else None)


def _request(operation: type[BaseModel], variables: Mapping[str, object]) -> GraphQLRequest:
    """The operation's document with its variables, checked by its generated `Arguments`
    model and serialized as JSON (arguments and input fields left unset are not sent)."""
    arguments: type[BaseModel] = getattr(operation, "Arguments")  # noqa: B009 (generated)
    document: str = getattr(operation, "Meta").document  # noqa: B009
    values = arguments.model_validate(dict(variables)).model_dump(
        mode="json", by_alias=True, exclude_unset=True
    )
    return GraphQLRequest(document, variable_values=values)


class Transport:
    """`url` is the GraphQL endpoint (`http://127.0.0.1:8000/graphql`), `key` an API key
    (None: send none, for a server with AUTH_DISABLED). Each call opens its own connection:
    a client can be shared by any number of tasks."""

    def __init__(self, url: str, key: str | None = None, *, timeout: float = 30) -> None:
        self.url = url
        self.timeout = timeout
        self._auth = {"Authorization": f"Bearer {key}"} if key else {}

    @property
    def ws_url(self) -> str:
        scheme, rest = self.url.split("://", 1)
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}"

    async def aexecute(self, operation: type[Result], variables: Mapping[str, object]) -> Result:
        """Run a query or mutation over HTTP; its data as the operation's model."""
        request = _request(operation, variables)
        transport = HTTPXAsyncTransport(url=self.url, headers=self._auth, timeout=self.timeout)
        try:
            async with Client(transport=transport, execute_timeout=self.timeout) as session:
                data = await session.execute(request)
        except TransportQueryError as error:
            raise TaskrunnerError.of(error) from error
        return operation.model_validate(data)

    async def asubscribe(
        self, operation: type[Result], variables: Mapping[str, object]
    ) -> AsyncIterator[Result]:
        """Run a subscription over one websocket; each result as the operation's model,
        until the server completes it (or the caller closes this generator)."""
        request = _request(operation, variables)
        transport = WebsocketsTransport(
            url=self.ws_url,
            subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
            init_payload=self._auth,  # graphql-transport-ws: the key goes in connection_init
            connect_timeout=self.timeout,
        )
        try:
            async with Client(transport=transport) as session:
                results = session.subscribe(request)
                try:
                    async for data in results:
                        yield operation.model_validate(data)
                finally:
                    await results.aclose()
        except TransportQueryError as error:
            raise TaskrunnerError.of(error) from error
