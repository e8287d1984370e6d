"""Completion webhooks: a task's final status POSTed to its webhook URL, signed, retried.

- The outbox is the `webhook_delivery` table, one row per attempt. A delivery's first
  attempt is inserted by a trigger (migration 0018) in the very transaction that writes
  the final status, so a crash loses none, and the write path of tasks without a webhook
  is untouched (the trigger's WHEN clause skips them). The row holds the body's `task`
  as that final status was written: every attempt sends the same body.
- Every worker claims due rows (`claim`: SKIP LOCKED, a lease of twice
  WEBHOOK_TIMEOUT_SECONDS and 5 s, so two workers never post the same attempt at once and a crashed
  worker's claim runs out), POSTs them beside its tasks (never in a task's slot), and
  records each outcome (`record`), inserting the next attempt after a backoff.
- The POST goes through the webScrape SSRF guard (taskrunner.fetch) with WEBHOOK_ALLOWLIST,
  to exactly the address checked; redirects are not followed.
- The body is signed with HMAC-SHA256 by the secret of the key that submitted the task
  (else WEBHOOK_SECRET): `Taskrunner-Signature: t=<unix time>,v1=<hex of HMAC(secret,
  "<t>.<body>")>` (README: Completion webhooks).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import httpx
import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import connections, fetch
from taskrunner.config import Settings
from taskrunner.logs import event
from taskrunner.models import webhook_delivery_table

log = logging.getLogger(__name__)

EVENT = "task.finished"
SIGNATURE_HEADER = "Taskrunner-Signature"
DELIVERY_HEADER = "Taskrunner-Delivery"
EVENT_HEADER = "Taskrunner-Event"
ATTEMPT_HEADER = "Taskrunner-Attempt"
USER_AGENT = "taskrunner-webhook/0.1"


def lease_seconds(settings: Settings) -> float:
    """How long a claim holds an attempt: twice the POST's timeout and 5 s more (the POST
    is cut at its timeout; what follows is writing the outcome)."""
    return 2 * settings.webhook_timeout_seconds + 5


BACKOFF_FACTOR = 3
MAX_ERROR_LENGTH = 500


class DeliveryStatus(StrEnum):
    PENDING = "PENDING"  # due at due_at (claimed while lease_until is ahead)
    DELIVERED = "DELIVERED"  # the receiver answered 2xx
    FAILED = "FAILED"  # this attempt failed; a PENDING next attempt follows unless given up


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The Taskrunner-Signature header of `body` sent at `timestamp` (unix seconds)."""
    mac = hmac.new(secret.encode(), b"%d." % timestamp + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def backoff_seconds(
    attempt: int, settings: Settings, rand: Callable[[], float] = random.random
) -> float:
    """The wait after attempt `attempt` (1, 2, ...) failed: WEBHOOK_RETRY_BASE_SECONDS times
    3 per attempt before, at most WEBHOOK_RETRY_MAX_SECONDS, jittered by +-25% (receivers
    that came back are not hit by every sender at once)."""
    wait: float = settings.webhook_retry_base_seconds * BACKOFF_FACTOR ** (attempt - 1)
    return min(wait, settings.webhook_retry_max_seconds) * (0.75 + 0.5 * rand())


@dataclass(frozen=True)
class Claimed:
    """A due attempt this worker claimed: what to POST, and the claim's token."""

    id: int
    delivery_id: uuid.UUID
    task_id: uuid.UUID
    attempt: int
    url: str
    task: dict[str, Any]
    # the submitting key's webhook secret (None: WEBHOOK_SECRET); kept out of reprs and logs
    secret: str | None = field(repr=False)
    token: uuid.UUID

    def body(self) -> bytes:
        return orjson.dumps(
            {
                "event": EVENT,
                "deliveryId": str(self.delivery_id),
                "attempt": self.attempt,
                "task": self.task,
            }
        )


@dataclass(frozen=True)
class Outcome:
    status: DeliveryStatus
    status_code: int | None = None
    error: str | None = None
    retry: bool = False  # a failure worth another attempt


CLAIM = """
WITH due AS (
  SELECT id FROM webhook_delivery
  WHERE status = 'PENDING' AND due_at <= clock_timestamp()
    AND (lease_until IS NULL OR lease_until < clock_timestamp())
  ORDER BY due_at LIMIT $1
  FOR UPDATE SKIP LOCKED
)
UPDATE webhook_delivery d
SET lease_until = clock_timestamp() + make_interval(secs => $2), lease_token = $3,
    started_at = clock_timestamp()
FROM due WHERE d.id = due.id
RETURNING d.id, d.delivery_id, d.task_id, d.attempt, d.url, d.task,
  (SELECT k.webhook_secret FROM task t JOIN api_key k ON k.id = t.key_id
   WHERE t.id = d.task_id) AS secret"""


async def claim(engine: AsyncEngine, most: int, settings: Settings) -> list[Claimed]:
    """Claim up to `most` due attempts for this worker, leased for `lease_seconds`; a
    claim that runs out (its worker died) is claimed again."""
    token = uuid.uuid4()
    async with connections.connection(engine) as conn:
        rows = await conn.fetch(CLAIM, most, lease_seconds(settings), token)
    return [
        Claimed(
            id=r["id"],
            delivery_id=r["delivery_id"],
            task_id=r["task_id"],
            attempt=r["attempt"],
            url=r["url"],
            task=r["task"],
            secret=r["secret"],
            token=token,
        )
        for r in rows
    ]


def client(settings: Settings) -> httpx.AsyncClient:
    """The HTTP client of a worker's deliveries: no redirects, no proxies from the
    environment, no kept connections (each POST connects to the address just checked)."""
    return httpx.AsyncClient(
        follow_redirects=False,
        timeout=settings.webhook_timeout_seconds,
        trust_env=False,
        headers={"User-Agent": USER_AGENT},
        limits=httpx.Limits(max_keepalive_connections=0),
    )


def _error(text: str) -> str:
    return text if len(text) <= MAX_ERROR_LENGTH else text[: MAX_ERROR_LENGTH - 1] + "…"


async def post(http: httpx.AsyncClient, claimed: Claimed, settings: Settings) -> Outcome:
    """POST one attempt; its outcome. Never raises for what the receiver or the network
    does: a refusal of the guard, a timeout, a connection error are outcomes too."""
    secret = claimed.secret or (
        settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    )
    if not secret:
        return Outcome(
            DeliveryStatus.FAILED,
            error="nothing can sign it: the task's key has no webhook secret and "
            "WEBHOOK_SECRET is not set",
        )
    body = claimed.body()
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(secret, int(time.time()), body),
        DELIVERY_HEADER: str(claimed.delivery_id),
        EVENT_HEADER: EVENT,
        ATTEMPT_HEADER: str(claimed.attempt),
    }
    timeout = settings.webhook_timeout_seconds
    try:
        async with asyncio.timeout(timeout):
            addresses = await fetch.check_url(
                claimed.url, settings.webhook_allowlist, "WEBHOOK_ALLOWLIST"
            )
            async with fetch.send_pinned(
                http, httpx.URL(claimed.url), addresses, "POST", content=body, headers=headers
            ) as response:
                code = response.status_code
    except fetch.Unresolved as exc:
        return Outcome(DeliveryStatus.FAILED, error=_error(str(exc)), retry=True)
    except fetch.FetchRefused as exc:  # the same URL is refused again: not retried
        why = str(exc).replace("to fetch it", "to send webhooks there")
        return Outcome(DeliveryStatus.FAILED, error=_error(f"refused: {why}"))
    except (TimeoutError, httpx.TimeoutException):
        return Outcome(
            DeliveryStatus.FAILED,
            error=f"no answer within WEBHOOK_TIMEOUT_SECONDS ({timeout:g} s)",
            retry=True,
        )
    except (httpx.HTTPError, OSError) as exc:
        return Outcome(
            DeliveryStatus.FAILED, error=_error(f"{type(exc).__name__}: {exc}"), retry=True
        )
    except Exception as exc:  # e.g. a URL stored before its check took httpx's view of it
        log.warning("webhook %s: could not be sent", claimed.delivery_id, exc_info=True)
        return Outcome(DeliveryStatus.FAILED, error=_error(f"{type(exc).__name__}: {exc}"))
    if 200 <= code < 300:
        return Outcome(DeliveryStatus.DELIVERED, status_code=code)
    if code == 410:
        return Outcome(
            DeliveryStatus.FAILED, code, "410 Gone: the receiver wants no more deliveries"
        )
    why = f"HTTP {code}" + (" (redirects are not followed)" if 300 <= code < 400 else "")
    return Outcome(DeliveryStatus.FAILED, code, why, retry=True)


FINISH = """
UPDATE webhook_delivery
SET status = $3, status_code = $4, error = $5, finished_at = clock_timestamp(),
    duration_ms = extract(epoch FROM clock_timestamp() - started_at) * 1000,
    lease_until = NULL, lease_token = NULL
WHERE id = $1 AND lease_token = $2 AND status = 'PENDING'
RETURNING delivery_id, task_id, attempt, url, task"""
NEXT = """
INSERT INTO webhook_delivery (delivery_id, task_id, attempt, status, url, task, due_at)
VALUES ($1, $2, $3, 'PENDING', $4, $5::jsonb, clock_timestamp() + make_interval(secs => $6))"""


async def record(
    engine: AsyncEngine, claimed: Claimed, outcome: Outcome, settings: Settings
) -> bool:
    """Write an attempt's outcome and, for a failure worth it below WEBHOOK_MAX_ATTEMPTS,
    the next attempt, in one transaction. False when the claim had run out and another
    worker took the attempt over (nothing written)."""
    async with connections.transaction(engine) as conn:
        row = await conn.fetchrow(
            FINISH,
            claimed.id,
            claimed.token,
            outcome.status.value,
            outcome.status_code,
            outcome.error,
        )
        if row is None:
            return False
        again = outcome.retry and claimed.attempt < settings.webhook_max_attempts
        if again:
            await conn.execute(
                NEXT,
                row["delivery_id"],
                row["task_id"],
                row["attempt"] + 1,
                row["url"],
                orjson.dumps(row["task"]).decode(),
                backoff_seconds(claimed.attempt, settings),
            )
    event(
        "webhook_delivered" if outcome.status is DeliveryStatus.DELIVERED else "webhook_failed",
        logging.INFO if outcome.status is DeliveryStatus.DELIVERED else logging.WARNING,
        task_id=str(claimed.task_id),
        delivery_id=str(claimed.delivery_id),
        attempt=claimed.attempt,
        status_code=outcome.status_code,
        error=outcome.error,
        retrying=again,
    )
    return True


async def deliver(
    engine: AsyncEngine, http: httpx.AsyncClient, claimed: Claimed, settings: Settings
) -> None:
    """POST one claimed attempt and record how it went."""
    outcome = await post(http, claimed, settings)
    await record(engine, claimed, outcome, settings)


async def release(engine: AsyncEngine, tokens: list[uuid.UUID]) -> None:
    """Give back unfinished claims (a worker stopping): due again at once elsewhere."""
    if not tokens:
        return
    w = webhook_delivery_table.c
    async with engine.begin() as conn:
        await conn.execute(
            sa.update(webhook_delivery_table)
            .where(w.lease_token.in_(tokens), w.status == DeliveryStatus.PENDING.value)
            .values(lease_until=None, lease_token=None)
        )


@dataclass(frozen=True)
class DeliveryRecord:
    """One attempt as read for Task.webhookDeliveries."""

    delivery_id: uuid.UUID
    attempt: int
    status: str
    url: str
    task_status: str
    due_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: float | None
    status_code: int | None
    error: str | None


async def list_deliveries(
    engine: AsyncEngine, task_id: uuid.UUID, first: int
) -> list[DeliveryRecord]:
    """A task's webhook attempts, oldest first (the first `first`)."""
    w = webhook_delivery_table.c
    query = (
        sa.select(
            w.delivery_id,
            w.attempt,
            w.status,
            w.url,
            w.task["status"].astext.label("task_status"),
            w.due_at,
            w.started_at,
            w.finished_at,
            w.duration_ms,
            w.status_code,
            w.error,
        )
        .where(w.task_id == task_id)
        .order_by(w.id)
        .limit(first)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    return [DeliveryRecord(**r) for r in rows]
