"""The cursors of pages ordered newest first by (created_at, id): `schedules`,
`workflows`. Opaque to clients: base64 of the pair."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime

from taskrunner.errors import BadInput


def encode(at: datetime, row_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{row_id}".encode()).decode()


def decode(after: str, listing: str) -> tuple[datetime, uuid.UUID]:
    """The (created_at, id) in a cursor of `listing`, or BAD_INPUT on `after`."""
    try:
        at, _, row_id = base64.urlsafe_b64decode(after.encode()).decode().partition("|")
        when = datetime.fromisoformat(at)
        when.astimezone(UTC)  # aware, and within PostgreSQL's range in UTC
        if when.tzinfo is None:
            raise ValueError(at)
        return when, uuid.UUID(row_id)
    except (ValueError, OverflowError):
        raise BadInput(
            f"after: not a cursor of `{listing}`; pass an edge's cursor as given", field="after"
        ) from None
