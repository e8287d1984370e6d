"""The import arrows of .importlinter hold, and each contract breaks, by name, when a
forbidden import is added (in a copy of the packages, never in the checkout)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGES = ("api", "taskrunner", "workers")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
ROOT = next(p for p in Path(__file__).resolve().parents if (p / ".importlinter").exists())


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "300", "NO_COLOR": "1"}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("static"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    return tmp_path


def test_the_checkout_keeps_every_contract(copy: Path) -> None:
    result = _lint(copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        (
            "taskrunner/states.py",
            "import api.errors",
            "domain (taskrunner) -> neither api nor workers",
        ),
        (
            "taskrunner/journal.py",
            "import workers.runner",
            "domain (taskrunner) -> neither api nor workers",
        ),
        ("workers/memory.py", "import api.errors", "workers -> domain, never api"),
        (
            "api/errors.py",
            "import workers.runner",
            "api -> domain, and of workers only the task catalog",
        ),
        (
            "workers/catalog.py",
            "import workers.runner",
            "workers.catalog -> no other workers module",
        ),
        (
            "workers/runner.py",
            "import taskrunner.artifacts.signing",
            "link signing (taskrunner.artifacts.signing) -> used by the api and the CLI only",
        ),
        ("api/fanout/direct.py", "import api.schema", "api.fanout (the subscription engine)"),
        ("api/types/events.py", "import api.types.tasks", "api.types: each resource module"),
    ],
    ids=[
        "domain-api",
        "domain-workers",
        "workers-api",
        "api-worker-runtime",
        "catalog-runtime",
        "worker-signing",
        "fanout-schema",
        "graphql-types-cycle",
    ],
)
def test_a_forbidden_import_breaks_its_contract_by_name(
    copy: Path, module: str, line: str, contract: str
) -> None:
    path = copy / module
    path.write_text(path.read_text() + f"\n{line}  # the forbidden arrow\n")
    result = _lint(copy)
    assert result.returncode != 0, result.stdout
    broken = [row for row in result.stdout.splitlines() if " BROKEN" in row]
    assert any(row.startswith(contract) for row in broken), result.stdout
