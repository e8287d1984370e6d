"""`make smoke` (`taskrunner smoke`) against a real api and worker: every check passes but
search, skipped without BRAVE_API_KEY; against a service that cannot run tasks (no worker)
the task checks fail and the exit code says so."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from taskrunner.config import Settings
from tests.support.environment import process_env
from tests.support.servers import run_api, run_worker
from tests.support.stack import make_key


def _smoke(settings: Settings, url: str, key: str, within: str = "30") -> tuple[int, list[str]]:
    env = {**process_env(settings), "API_KEY": key}
    env.pop("BRAVE_API_KEY", None)
    done = subprocess.run(
        [sys.executable, "-m", "taskrunner", "smoke", "--url", url, "--within", within],
        env=env,
        capture_output=True,
        text=True,
        timeout=float(within) * 12 + 30,
        check=False,
        cwd=os.getcwd(),
    )
    return done.returncode, done.stdout.splitlines()


async def test_every_check_passes_against_a_running_service(settings: Settings) -> None:
    settings = settings.model_copy(update={"fetch_domain_allowlist": "127.0.0.1"})
    key = await make_key(settings)
    async with run_api(settings) as url, run_worker(settings):
        code, lines = await asyncio.to_thread(_smoke, settings, url, key)
    verdicts = {line.split(":")[0] for line in lines if line.split(" ")[0] in ("PASS", "SKIP")}
    assert code == 0, lines
    for name in ("ready", "echo", "sum", "sleep", "chatter", "report", "webScrape", "fail"):
        assert f"PASS {name}" in verdicts, lines
    assert {"PASS cancel", "PASS retry", "SKIP search"} <= verdicts, lines
    assert any("BRAVE_API_KEY" in line for line in lines if line.startswith("SKIP search")), lines
    assert lines[-1] == "smoke: all passed", lines


async def test_a_service_that_runs_nothing_fails_the_smoke(settings: Settings) -> None:
    key = await make_key(settings)
    async with run_api(settings) as url:  # no worker: tasks stay QUEUED
        code, lines = await asyncio.to_thread(_smoke, settings, url, key, "1")
    assert code == 1, lines
    assert any(line.startswith("PASS ready") for line in lines), lines
    assert any(line.startswith("FAIL echo: still QUEUED") for line in lines), lines
    assert lines[-1] == "smoke: FAILED", lines
