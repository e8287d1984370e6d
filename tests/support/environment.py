"""The environment of the test's code and processes: where the repository is, the short
intervals every test runs with, and the variables a `taskrunner` subprocess gets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from taskrunner.config import Settings

# Short intervals so that recovery happens within a test's patience.
FAST: dict[str, Any] = {
    "stream_quiet_seconds": 1.0,
    "worker_poll_delay_seconds": 0.02,
    "task_max_runtime_seconds": 60,
    "heartbeat_interval_seconds": 0.4,
    "scheduler_interval_seconds": 0.1,
    "reconcile_interval_seconds": 0.5,
    "worker_shutdown_grace_seconds": 2,
    "auth_recheck_seconds": 0.2,
    "tasks_per_minute": 0,  # tests that want the limit set it
    "worker_metrics_port": 0,  # many workers share a host; tests that scrape set a port
}


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment for a subprocess (api or worker) using the test's servers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COV_CORE")}
    env.update({k.upper(): str(v) for k, v in FAST.items()})
    env["DATABASE_URL"] = settings.require_database_url()
    env["REDIS_URL"] = settings.require_redis_url()
    env["LOG_LEVEL"] = "WARNING"
    env["DATA_DIR"] = str(settings.data_dir)
    if settings.artifact_signing_key is not None:
        env["ARTIFACT_SIGNING_KEY"] = settings.artifact_signing_key.get_secret_value()
    env.update(extra)
    return env


def task_package(root: Path, name: str, modules: dict[str, str]) -> dict[str, str]:
    """A package `name` of task modules (module name -> source) under `root`, as a user's
    own; the environment that makes the api and workers load it (TASKRUNNER_TASK_MODULES)."""
    package = root / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    for module, source in modules.items():
        (package / f"{module}.py").write_text(source)
    return {
        "PYTHONPATH": os.pathsep.join([str(root), str(repo_root())]),
        "TASKRUNNER_TASK_MODULES": name,
    }
