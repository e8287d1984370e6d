"""The GraphQL edge: Starlette app, Strawberry schema, error mapping."""
