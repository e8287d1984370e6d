"""The Python client example (frontend-examples/python-client) as its tests use it: its
folder, its package imported from there, and its operations."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from tests.support.environment import repo_root

CLIENT_DIR = repo_root() / "frontend-examples" / "python-client"
OPERATIONS = CLIENT_DIR / "operations.graphql"
GENERATED = CLIENT_DIR / "taskrunner_client" / "api.py"


@contextmanager
def imported_client() -> Iterator[ModuleType]:
    """The example's `taskrunner_client` package, imported from its folder."""
    sys.path.insert(0, str(CLIENT_DIR))
    try:
        yield importlib.import_module("taskrunner_client")
    finally:
        sys.path.remove(str(CLIENT_DIR))
