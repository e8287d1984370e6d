"""API keys: who is calling, and which tasks are theirs.

A key is `trk_` and 43 random URL-safe characters (256 bits). Only its SHA-256 is stored:
with that much entropy a plain hash cannot be reversed, and it lets a lookup by hash use
an index. Every key belongs to an owner (by default its own name); keys of one owner share
its tasks, so a key can be rotated by creating a new one for the owner and revoking the old.
An admin key sees every owner's tasks.

A key also has a webhook secret, `whsec_` and 43 random characters, which signs the
completion webhooks of the tasks it submits (taskrunner.webhooks). Signing (HMAC) needs
the secret itself, so that one is stored as it is; it too is shown once, when made.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import actors
from taskrunner.errors import BadInput, Conflict, NotFound
from taskrunner.models import ApiKey, api_key_table

PREFIX = "trk_"
WEBHOOK_SECRET_PREFIX = "whsec_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")


@dataclass(frozen=True)
class Principal:
    """The caller behind a request or a websocket connection."""

    key_id: uuid.UUID | None
    name: str
    owner: str
    admin: bool = False
    webhook_url: str | None = None  # the default webhook of the tasks it submits
    signs_webhooks: bool = False  # it has a webhook secret of its own

    @property
    def scope(self) -> str | None:
        """The owner whose tasks this caller may touch; None: every owner (admin)."""
        return None if self.admin else self.owner

    @property
    def actor(self) -> dict[str, str]:
        """This caller as the actor of the changes it asks for (taskrunner.actors)."""
        return actors.key(self.name, self.owner)


ANONYMOUS = Principal(key_id=None, name="anonymous", owner="")
"""The caller when AUTH_DISABLED=true: one owner for everybody."""


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _check_name(field: str, value: str) -> str:
    if not _NAME.match(value):
        raise BadInput(
            f"{field}: {value!r} is not a valid name; use 1 to 100 letters, digits, "
            "'.', '_', '@' or '-', starting with a letter or digit",
            field=field,
        )
    return value


def new_webhook_secret() -> str:
    return WEBHOOK_SECRET_PREFIX + secrets.token_urlsafe(32)


async def create(
    engine: AsyncEngine,
    *,
    name: str,
    owner: str | None = None,
    admin: bool = False,
    webhook_url: str | None = None,
) -> tuple[ApiKey, str]:
    """A new key: its row and the secret, which is shown once and never stored. The row
    holds its webhook secret (`row.webhook_secret`), to be shown once too; `webhook_url`
    (checked by the caller): the default webhook of the tasks it submits."""
    _check_name("name", name)
    secret = PREFIX + secrets.token_urlsafe(32)
    row = {
        "id": uuid.uuid4(),
        "name": name,
        "owner": _check_name("owner", owner or name),
        "admin": admin,
        "prefix": secret[: len(PREFIX) + 6],
        "hash": hash_key(secret),
        "webhook_url": webhook_url,
        "webhook_secret": new_webhook_secret(),
    }
    try:
        async with engine.begin() as conn:
            result = await conn.execute(
                sa.insert(api_key_table).values(row).returning(*api_key_table.c)
            )
            created = ApiKey.model_validate(result.mappings().one())
    except IntegrityError:
        raise Conflict(
            f"name: a key named {name!r} exists; choose another name (keys list shows them)",
            field="name",
        ) from None
    return created, secret


async def set_webhook(
    engine: AsyncEngine, name: str, *, url: str | None, new_secret: bool = False
) -> tuple[ApiKey, str | None]:
    """Set (None: clear) the default webhook of the key called `name` (checked by the
    caller); with `new_secret`, or when it has none (a key made before webhooks), give it
    a new webhook secret: returned then, to be shown once. Api processes see the change
    within a minute (they keep a key's lookup that long)."""
    k = api_key_table.c
    secret = new_webhook_secret()
    kept = k.webhook_secret if not new_secret else sa.literal(secret)
    async with engine.begin() as conn:
        result = await conn.execute(
            sa.update(api_key_table)
            .where(k.name == name)
            .values(webhook_url=url, webhook_secret=sa.func.coalesce(kept, secret))
            .returning(*api_key_table.c)
        )
        row = result.mappings().one_or_none()
    if row is None:
        raise NotFound(f"name: no key named {name!r} (keys list shows them)", field="name")
    updated = ApiKey.model_validate(row)
    return updated, secret if updated.webhook_secret == secret else None


async def list_keys(engine: AsyncEngine) -> list[ApiKey]:
    async with engine.connect() as conn:
        result = await conn.execute(sa.select(api_key_table).order_by(api_key_table.c.created_at))
        return [ApiKey.model_validate(r) for r in result.mappings()]


async def revoke(engine: AsyncEngine, name: str) -> ApiKey:
    """Revoke the key called `name` (already revoked: unchanged)."""
    k = api_key_table.c
    async with engine.begin() as conn:
        result = await conn.execute(
            sa.update(api_key_table)
            .where(k.name == name)
            .values(revoked_at=sa.func.coalesce(k.revoked_at, sa.func.clock_timestamp()))
            .returning(*api_key_table.c)
        )
        row = result.mappings().one_or_none()
    if row is None:
        raise NotFound(f"name: no key named {name!r} (keys list shows them)", field="name")
    return ApiKey.model_validate(row)


async def authenticate(engine: AsyncEngine, secret: str) -> Principal | None:
    """The principal of a live key, or None for an unknown or revoked one."""
    if not secret.startswith(PREFIX) or len(secret) > 100:
        return None
    k = api_key_table.c
    async with engine.connect() as conn:
        result = await conn.execute(
            sa.select(
                k.id, k.name, k.owner, k.admin, k.webhook_url, k.webhook_secret.is_not(None)
            ).where(k.hash == hash_key(secret), k.revoked_at.is_(None))
        )
        row = result.one_or_none()
    if row is None:
        return None
    return Principal(
        key_id=row[0],
        name=row[1],
        owner=row[2],
        admin=row[3],
        webhook_url=row[4],
        signs_webhooks=bool(row[5]),
    )


async def revoked_since(
    engine: AsyncEngine, since: datetime | None
) -> list[tuple[uuid.UUID, datetime]]:
    """Keys revoked at or after `since` (all revoked keys when None), oldest first."""
    k = api_key_table.c
    query = sa.select(k.id, k.revoked_at).where(k.revoked_at.is_not(None))
    if since is not None:
        query = query.where(k.revoked_at >= since)
    async with engine.connect() as conn:
        result = await conn.execute(query.order_by(k.revoked_at))
        return [(r.id, r.revoked_at) for r in result]
