"""Task events as typed messages: the row shape, the Redis channels, the cursor.

An event is written to `task_event` by the journal and, only after its transaction
commits, published as JSON on `task:{id}` and `owner:{owner}`. Subscribers treat the
message as a hint that may be lost or duplicated: PostgreSQL stays the truth.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any

import asyncpg
import orjson
from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from taskrunner import jsonx
from taskrunner.errors import BadInput

log = logging.getLogger(__name__)
CURSOR_WIDTH = 12  # zero-padded, so cursors compare the same as text and as numbers


class EventKind(StrEnum):
    STATUS = "status"
    PROGRESS = "progress"
    LOG = "log"
    ARTIFACT = "artifact"
    SCHEDULE = "schedule"  # a schedule's note on a task: a tick skipped while it is unfinished
    STEP_READY = "step_ready"  # a workflow step's parents all SUCCEEDED: it is enqueued
    WORKFLOW = "workflow"  # its workflow's status changed (on the step whose change did it)


class Event(BaseModel):
    """One row of `task_event`. `seq` numbers a task's events 1, 2, 3 ... without gaps;
    `id` is the global cursor; `xid` is the writing transaction (orders `tasksUpdates`)."""

    model_config = ConfigDict(frozen=True)

    id: int
    task_id: uuid.UUID
    seq: int
    xid: int
    owner: str
    kind: EventKind
    at: datetime
    data: dict[str, Any]

    @property
    def cursor(self) -> str:
        return encode_cursor(self.id)

    def to_json(self) -> bytes:
        return jsonx.dumps(self.model_dump(mode="json"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Event:
        return cls.model_validate(orjson.loads(raw))

    @classmethod
    def from_row(cls, row: Mapping[Any, Any] | asyncpg.Record) -> Event:
        return cls.model_validate(dict(row))


def encode_cursor(event_id: int) -> str:
    return str(event_id).zfill(CURSOR_WIDTH)


def decode_cursor(cursor: str, *, field: str = "after") -> int:
    """The event id inside a cursor, or BAD_INPUT naming `field`."""
    if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 18):
        raise BadInput(
            f"{field}: {cursor!r} is not a cursor; pass the `cursor` of an event you received",
            field=field,
        )
    return int(cursor)


def task_channel(task_id: uuid.UUID | str) -> str:
    return f"taskrunner:task:{task_id}"


def owner_channel(owner: str) -> str:
    return f"taskrunner:owner:{owner}"


ALL_CHANNEL = "taskrunner:events"
"""Every event, for admins' tasksUpdates."""

CANCEL_CHANNEL = "taskrunner:cancel"
"""Where cancelTask tells the workers to stop a running attempt (`cancel_message`)."""


def cancel_message(task_id: uuid.UUID, attempt: int) -> str:
    """What workers hear on CANCEL_CHANNEL: which task, and which attempt of it (a late
    message must not cancel a later attempt after retryTask)."""
    return f"{task_id}:{attempt}"


def parse_cancel_message(text: str) -> tuple[uuid.UUID, int]:
    """The (task id, attempt) of a `cancel_message`."""
    task_id, _, attempt = text.partition(":")
    return uuid.UUID(task_id), int(attempt)


def add_publishes(pipe: Pipeline, events: Iterable[Event]) -> None:
    """Queue the PUBLISH commands of committed events on a pipeline."""
    for event in events:
        payload = event.to_json()
        pipe.publish(task_channel(event.task_id), payload)
        pipe.publish(owner_channel(event.owner), payload)
        pipe.publish(ALL_CHANNEL, payload)


async def publish(redis: Redis, events: Iterable[Event]) -> None:
    """Publish committed events on their task, owner and all-events channels, in one round
    trip.

    Best effort: the events are committed already, and streams re-read PostgreSQL when
    Redis stays quiet, so a failed publish delays them instead of failing the caller."""
    events = list(events)
    if not events:
        return
    try:
        async with redis.pipeline(transaction=False) as pipe:
            add_publishes(pipe, events)
            await pipe.execute()
    except RedisError as exc:
        log.warning("could not publish %d events (%s); streams will re-read them", len(events), exc)
