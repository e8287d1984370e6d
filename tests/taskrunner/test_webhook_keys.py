"""`taskrunner keys` and webhooks: a key's webhook secret is printed once when it is made,
its default webhook is checked like options.webhookUrl, `set-webhook` keeps the secret
unless asked for a new one (or the key had none)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner.config import Settings
from taskrunner.models import api_key_table
from tests.support.environment import process_env
from tests.support.processes import keys_cli


async def _row(engine: AsyncEngine, name: str) -> sa.Row[tuple[str | None, str | None]]:
    k = api_key_table.c
    async with engine.connect() as conn:
        found = await conn.execute(sa.select(k.webhook_url, k.webhook_secret).where(k.name == name))
        return found.one()


async def test_keys_create_prints_the_webhook_secret_once_and_sets_the_default_webhook(
    settings: Settings, engine: AsyncEngine
) -> None:
    env = process_env(settings)
    code, out, err = await keys_cli(
        env, "create", "hooked", "--webhook-url", "https://hooks.example.com/x"
    )
    assert code == 0, err
    key, secret = out.split()
    assert key.startswith("trk_") and secret.startswith("whsec_")
    assert "webhook secret" in err and "only this once" in err
    assert tuple(await _row(engine, "hooked")) == ("https://hooks.example.com/x", secret)

    code, out, _ = await keys_cli(env, "set-webhook", "hooked", "--url", "https://b.example.com/")
    assert (code, out) == (0, "")  # the secret is kept, so nothing to show
    assert tuple(await _row(engine, "hooked")) == ("https://b.example.com/", secret)

    code, out, _ = await keys_cli(env, "set-webhook", "hooked", "--clear", "--new-secret")
    assert code == 0
    (fresh,) = out.split()
    assert fresh.startswith("whsec_") and fresh != secret
    assert tuple(await _row(engine, "hooked")) == (None, fresh)


async def test_a_bad_default_webhook_is_refused_naming_the_option_and_changes_nothing(
    settings: Settings, engine: AsyncEngine
) -> None:
    env = process_env(settings)
    code, out, err = await keys_cli(
        env, "create", "refused", "--webhook-url", "http://169.254.169.254/latest"
    )
    assert (code, out) == (1, "")
    assert "--webhook-url: host 169.254.169.254 resolves to a loopback, link-local" in err
    async with engine.connect() as conn:
        names = await conn.scalars(sa.select(api_key_table.c.name))
        assert "refused" not in list(names)

    assert (await keys_cli(env, "create", "kept"))[0] == 0
    before = tuple(await _row(engine, "kept"))
    code, _, err = await keys_cli(env, "set-webhook", "kept", "--url", "ftp://x.example.com/")
    assert code == 1 and "--url: 'ftp://x.example.com/': only http and https" in err
    code, _, err = await keys_cli(env, "set-webhook", "kept")
    assert code == 1 and "give --url URL, or --clear" in err
    assert tuple(await _row(engine, "kept")) == before
