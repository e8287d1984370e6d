"""Configuration: a bad or missing value stops start-up naming the variable."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import timedelta

import pytest

from taskrunner.config import load_settings
from taskrunner.errors import ConfigError


def test_bad_number_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASK_MAX_RUNTIME_SECONDS", "soon")
    with pytest.raises(ConfigError, match="TASK_MAX_RUNTIME_SECONDS"):
        load_settings(_env_file=None)


def test_bad_url_scheme_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://localhost/x")
    with pytest.raises(ConfigError, match=r"DATABASE_URL: .*postgresql://"):
        load_settings(_env_file=None)


def test_missing_database_url_says_how_to_fix() -> None:
    settings = load_settings(database_url=None, _env_file=None)
    with pytest.raises(ConfigError, match=r"DATABASE_URL is not set.*taskrunner dev"):
        settings.require_database_url()


def test_cli_refuses_to_start_on_a_bad_value() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "taskrunner", "migrate"],
        env={"PATH": "", "PORT": "-3"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "PORT" in out.stderr


def test_a_bad_url_never_shows_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://app:hunter2-db@db.internal/x")
    monkeypatch.setenv("REDIS_URL", "http://:hunter2-redis@cache.internal:6379/0")
    with pytest.raises(ConfigError) as err:
        load_settings(_env_file=None)
    message = str(err.value)
    assert "DATABASE_URL" in message and "REDIS_URL" in message
    assert "hunter2" not in message, message
    assert "db.internal" in message  # what is not secret still helps to find the mistake


def test_a_bad_key_or_secret_value_is_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINIO_SECURE", "perhaps")
    with pytest.raises(ConfigError) as err:
        load_settings(
            brave_api_key=["brave-s3cret"],
            artifact_signing_key={"k": "signing-s3cret"},
            minio_access_key=["access-s3cret"],
            minio_secret_key=12345678,
            _env_file=None,
        )
    message = str(err.value)
    for name in ("BRAVE_API_KEY", "ARTIFACT_SIGNING_KEY", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"):
        assert name in message, message
    assert "s3cret" not in message and "12345678" not in message, message
    assert "MINIO_SECURE" in message and "'perhaps'" in message  # not a secret: shown


@pytest.mark.parametrize("name", ["MINIO_SECURE", "MINIO_USE_SSL"])
def test_minio_https_is_read_under_both_names(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """MINIO_USE_SSL is seed 000's name for MINIO_SECURE."""
    assert load_settings(_env_file=None).minio_secure is False
    monkeypatch.setenv(name, "true")
    assert load_settings(_env_file=None).minio_secure is True
    assert load_settings(_env_file=None, minio_secure=False).minio_secure is False


def test_bad_pool_size_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_POOL_SIZE", "0")
    with pytest.raises(ConfigError, match="DB_POOL_SIZE"):
        load_settings(_env_file=None)


def test_env_example_is_generated_and_lists_every_setting() -> None:
    """.env.example is `make schema`'s output, and each of its defaults is the setting's."""
    from taskrunner.cli import ENV_EXAMPLE_FILE
    from taskrunner.config import Settings, env_example

    text = ENV_EXAMPLE_FILE.read_text()
    assert text == env_example(), "stale .env.example: run `make schema`"
    lines = [line[2:] for line in text.splitlines() if re.match(r"# [A-Z0-9_]+=", line)]
    assert [line.split("=", 1)[0] for line in lines] == [n.upper() for n in Settings.model_fields]
    # uncommented, the values given are the defaults
    given = dict(line.split("=", 1) for line in lines if not line.endswith("="))
    assert load_settings(
        _env_file=None, **{k.lower(): v for k, v in given.items()}
    ).model_dump() == (load_settings(_env_file=None).model_dump())


@pytest.mark.parametrize("name", ["TASK_RETENTION_DAYS", "IDEMPOTENCY_KEY_TTL_HOURS"])
@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_a_bad_retention_period_names_the_variable_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=rf"{name}: .*give a finite number >= 0 \(0 turns"):
        load_settings(_env_file=None)


def test_retention_periods_are_off_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(_env_file=None)
    assert settings.task_retention() is None and settings.idempotency_key_ttl() is None
    monkeypatch.setenv("TASK_RETENTION_DAYS", "0.5")
    monkeypatch.setenv("IDEMPOTENCY_KEY_TTL_HOURS", "24")
    settings = load_settings(_env_file=None)
    assert settings.task_retention() == timedelta(hours=12)
    assert settings.idempotency_key_ttl() == timedelta(days=1)
