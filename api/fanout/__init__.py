"""The subscription fan-out engine: a live event's GraphQL result is executed once per
subscription shape, encoded once, and written to each subscriber's socket past
strawberry's per-result pipeline, without changing a byte a client or an extension sees.

- `events`: the GraphQL object of each live event, made once, and the results shared on it;
- `executor`: `SharedEventExecutor`, strawberry's executor sharing per-event executions;
- `extensions`: `ExtensionsRunner` (no per-result work no extension asks for) and
  `FanoutSchema`, the strawberry Schema that uses it;
- `delivery`: `Delivery`, one graphql-transport-ws operation's way to its socket;
- `direct`: `Direct`, what a subscription resolver sends that way;
- `handlers`: the websocket protocol handlers (graphql-transport-ws, graphql-ws);
- `websocket`: uvicorn's websocket protocol with coalesced writes and `send_text_now`.

It subclasses strawberry-graphql and uvicorn internals: README.md here lists each, and
tests/api/test_fanout_internals.py fails by name when an upgrade changes one. Nothing here
imports `api.schema`.
"""
