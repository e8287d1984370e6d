"""The lock files `make lock` writes, and their pins: `name==version ; marker`, each with
its hashes, evaluated for CPython on Linux."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.environment import repo_root

ROOT = repo_root()
DEV_LOCK = ROOT / "requirements-dev.lock"  # make install, CI
RUNTIME_LOCK = ROOT / "requirements.lock"  # the Dockerfile
BENCH_LOCK = ROOT / "requirements-bench.lock"  # make bench


def linux_markers(python: str, extra: str = "") -> dict[str, str]:
    """Marker variables of CPython `python` on Linux (the rest: this interpreter's)."""
    return {
        "python_version": python,
        "python_full_version": f"{python}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "platform_python_implementation": "CPython",
        "implementation_name": "cpython",
        "extra": extra,
    }


@dataclass(frozen=True)
class Pin:
    requirement: Requirement  # name==version ; marker
    hashes: int

    @property
    def name(self) -> str:
        return canonicalize_name(self.requirement.name)

    @property
    def version(self) -> str:
        return next(iter(self.requirement.specifier)).version

    def applies(self, python: str) -> bool:
        marker = self.requirement.marker
        return marker is None or marker.evaluate(linux_markers(python))


def pins_of(lock: Path) -> list[Pin]:
    """The requirements of a lock: each a `name==version ; marker \\` line, then its hashes."""
    entries = re.split(r"\n(?=[^\s#])", lock.read_text())
    found = []
    for entry in entries:
        if entry.startswith("#"):
            continue
        first = entry.split("\n", 1)[0].rstrip(" \\")
        found.append(Pin(Requirement(first), entry.count("--hash=sha256:")))
    return found
