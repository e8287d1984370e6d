"""Typed domain errors. Each expected failure carries the code clients see in GraphQL."""

from __future__ import annotations


class ConfigError(Exception):
    """A setting is missing or invalid; the message names the variable."""


class TaskrunnerError(Exception):
    """An expected failure, answered to the client with `code` and a message saying the fix."""

    code = "INTERNAL"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    @property
    def extensions(self) -> dict[str, str]:
        """graphql-core copies this onto the GraphQL error clients see."""
        ext = {"code": self.code}
        if self.field:
            ext["field"] = self.field
        return ext


class BadInput(TaskrunnerError):
    code = "BAD_INPUT"


class NotFound(TaskrunnerError):
    code = "NOT_FOUND"


class Conflict(TaskrunnerError):
    code = "CONFLICT"


class LimitExceeded(TaskrunnerError):
    code = "LIMIT_EXCEEDED"
