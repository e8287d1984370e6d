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
    def extensions(self) -> dict[str, object]:
        """graphql-core copies this onto the GraphQL error clients see."""
        ext: dict[str, object] = {"code": self.code}
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


class Unauthenticated(TaskrunnerError):
    code = "UNAUTHENTICATED"


class Forbidden(TaskrunnerError):
    """The caller's key may not do this (an admin-only operation)."""

    code = "FORBIDDEN"


class RetryLater(TaskrunnerError):
    """A refusal that passes with time: `retry_after` (seconds) reaches clients as
    `extensions.retryAfterSeconds`."""

    def __init__(self, message: str, *, retry_after: int, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.retry_after = retry_after

    @property
    def extensions(self) -> dict[str, object]:
        return {**super().extensions, "retryAfterSeconds": self.retry_after}


class RateLimited(RetryLater):
    """Over TASKS_PER_MINUTE; `retry_after` says how many seconds to wait."""

    code = "RATE_LIMITED"


class Unavailable(RetryLater):
    """PostgreSQL cannot be reached right now (down, restarting, a connection lost): the
    call may not have happened (or, lost mid-statement, may have); `retry_after` says when
    to try again."""

    code = "UNAVAILABLE"
