"""Importing the api reads neither the task catalog nor the settings: the catalog is read
when the schema is built (`api.schema.build_schema`), and the fan-out engine
(`api.fanout`) loads without the schema. Each check runs in a fresh interpreter, where
nothing is cached yet."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.environment import repo_root

ROOT = repo_root()
MISSING_MODULE = "no_such_task_package_for_the_import_test"


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


IMPORT_THE_API = """
import api.app, api.schema, api.sse
from taskrunner.config import get_settings
from workers.catalog import catalog
assert get_settings.cache_info().currsize == 0, "the settings were read at import"
assert catalog.cache_info().currsize == 0, "the catalog was read at import"
print("imported")
"""


def test_importing_the_api_reads_no_catalog_and_no_settings() -> None:
    """A task package that cannot be imported and a malformed setting: the api still
    imports (only building the schema, or the settings, would fail)."""
    done = _python(
        IMPORT_THE_API, TASKRUNNER_TASK_MODULES=MISSING_MODULE, MAX_PAGE_SIZE="not-a-number"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "imported"


def test_the_catalog_is_read_when_the_schema_is_built() -> None:
    code = "from api.schema import build_schema\nbuild_schema()"
    done = _python(code, TASKRUNNER_TASK_MODULES=MISSING_MODULE)
    assert done.returncode != 0
    assert f"TASKRUNNER_TASK_MODULES: cannot import {MISSING_MODULE!r}" in done.stderr


def test_the_fanout_engine_loads_without_the_schema() -> None:
    code = (
        "import sys\n"
        "import api.fanout.delivery, api.fanout.direct, api.fanout.events\n"
        "import api.fanout.executor, api.fanout.extensions, api.fanout.handlers\n"
        "import api.fanout.websocket\n"
        "assert 'api.schema' not in sys.modules, 'api.fanout imports api.schema'\n"
    )
    done = _python(code)
    assert done.returncode == 0, done.stderr
