"""Links to artifact bytes: expiring HMAC-signed links the api serves, and their key. Only
the api (which signs and checks them) and the CLI (which keeps the key of `taskrunner dev`)
import this module; .importlinter holds that."""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Signer:
    """Expiring HMAC signatures for local artifact URLs. `clock` gives the time (seconds
    since the epoch) that links expire against."""

    key: bytes
    clock: Callable[[], float] = field(default=time.time)

    # What a link lets its holder do; a download link never works as an upload link.
    # A task's log (`Task.logsUrl`) is signed with the task's id.
    ROUTES = {
        "download": "/artifacts/{}",
        "upload": "/artifacts/uploads/{}",
        "log": "/tasks/{}/log",
    }

    def signature(self, artifact_id: uuid.UUID, expires: int, purpose: str = "download") -> str:
        message = f"{purpose}:{artifact_id}:{expires}".encode()
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()

    def path(self, artifact_id: uuid.UUID, ttl_seconds: int, purpose: str = "download") -> str:
        expires = math.ceil(self.clock()) + ttl_seconds  # valid at least ttl_seconds
        signature = self.signature(artifact_id, expires, purpose)
        route = self.ROUTES[purpose].format(artifact_id)
        return f"{route}?expires={expires}&signature={signature}"

    def valid(
        self, artifact_id: uuid.UUID, expires: int, signature: str, purpose: str = "download"
    ) -> bool:
        expected = self.signature(artifact_id, expires, purpose).encode()
        # as bytes: compare_digest refuses str with non-ASCII characters (a TypeError)
        given = signature.encode("utf-8", "replace")
        return hmac.compare_digest(expected, given) and expires >= self.clock()


def load_or_create_key(path: Path) -> bytes:
    """A signing key kept in a file (for `taskrunner dev`), made on first use."""
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    key = os.urandom(32)
    path.write_text(key.hex())
    path.chmod(0o600)
    return key
