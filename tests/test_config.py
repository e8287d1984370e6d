"""Configuration: a bad or missing value stops start-up naming the variable."""

from __future__ import annotations

import subprocess
import sys

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
