"""Maps failures onto the contract's error codes, in one place.

- a `TaskrunnerError` raised by a resolver keeps its message; graphql-core copies its
  `extensions` (code, field) onto the error;
- an error GraphQL itself found (unknown field, wrong type, a @oneOf with two members)
  gets code BAD_INPUT;
- PostgreSQL unreachable, or a connection to it lost mid-call, is UNAVAILABLE with
  retryAfterSeconds (taskrunner.db.unavailable says which failures are that);
- anything else is unexpected: the client sees "internal error" and an id to quote, the
  server logs the traceback under that id.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator

from graphql import ExecutionResult as GraphQLExecutionResult
from graphql.error import GraphQLError
from strawberry.extensions import SchemaExtension
from strawberry.types.execution import ExecutionResult

from taskrunner.db import unavailable, unavailable_error
from taskrunner.errors import TaskrunnerError
from workers.catalog import catalog

log = logging.getLogger(__name__)


def _task_spec_hint() -> str:
    """How to give a TaskSpecInput, naming the catalog's task types."""
    return (
        'Give exactly one task type, e.g. task: {echo: {message: "hi"}}; '
        f"the types are: {', '.join(catalog())} (query taskTypes for their inputs)."
    )


LIMIT_HINTS = {  # what graphql-core and strawberry's limiters say -> how to stay under
    "exceeds maximum operation depth": " (MAX_QUERY_DEPTH): ask for less nesting, or split "
    "the query",
    "aliases found": " (MAX_QUERY_ALIASES): use fewer aliases, or send several requests",
    "tokens. Parsing aborted": " (MAX_QUERY_TOKENS): send a shorter document; pass data "
    "in variables, not literals",
}


INCIDENT_ATTRIBUTE = "_taskrunner_incident"


def classify(error: GraphQLError) -> GraphQLError:
    """The error as clients should see it."""
    original = error.original_error
    if isinstance(original, TaskrunnerError):
        return error
    if original is None:
        if (error.extensions or {}).get("code"):
            return error
        spec_hint = "'TaskSpecInput'" in error.message
        code, hint = "BAD_INPUT", f" {_task_spec_hint()}" if spec_hint else ""
        for marker, limit_hint in LIMIT_HINTS.items():
            if marker in error.message:
                code, hint = "LIMIT_EXCEEDED", limit_hint
        return GraphQLError(  # a copy: validation errors are cached and shared
            error.message + hint,
            nodes=error.nodes,
            source=error.source,
            positions=error.positions,
            path=error.path,
            extensions={**(error.extensions or {}), "code": code},
        )
    if isinstance(original, GraphQLError) and original.original_error is None:
        return classify(original)
    if unavailable(original):
        return _unavailable(error, original)
    incident = getattr(original, INCIDENT_ATTRIBUTE, None)
    if incident is None:  # logged once, however many layers classify the same error
        incident = uuid.uuid4().hex[:12]
        with contextlib.suppress(AttributeError):  # a few built-in exceptions have no dict
            setattr(original, INCIDENT_ATTRIBUTE, incident)
        log.error("unexpected error %s at %s", incident, error.path, exc_info=original)
    return GraphQLError(
        f"internal error (incident {incident}); it was logged, please report it",
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        extensions={"code": "INTERNAL", "incident": incident},
    )


UNAVAILABLE_LOGGED = "_taskrunner_unavailable_logged"


def _unavailable(error: GraphQLError, original: Exception) -> GraphQLError:
    """PostgreSQL could not be reached, or the connection to it was lost: UNAVAILABLE with
    retryAfterSeconds, as for a refused connection. What failed is logged (once), never
    sent: no SQL, host or exception text."""
    if not getattr(original, UNAVAILABLE_LOGGED, False):
        with contextlib.suppress(AttributeError):
            setattr(original, UNAVAILABLE_LOGGED, True)
        log.warning("answered UNAVAILABLE at %s: %r", error.path, original)
    answer = unavailable_error()
    return GraphQLError(
        answer.message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        extensions=answer.extensions,
    )


class ErrorCodes(SchemaExtension):
    def on_parse(self) -> Iterator[None]:
        # ParserCache parses inside this hook: a syntax error (or MAX_QUERY_TOKENS) leaves
        # it as an exception, whose result is built after on_operation has finished.
        try:
            yield
        except GraphQLError as error:
            raise classify(error) from None

    def on_operation(self) -> Iterator[None]:
        yield
        result = self.execution_context.result
        if isinstance(result, GraphQLExecutionResult | ExecutionResult) and result.errors:
            result.errors = [classify(e) for e in result.errors]
        pre = self.execution_context.pre_execution_errors
        if pre:
            self.execution_context.pre_execution_errors = [classify(e) for e in pre]
