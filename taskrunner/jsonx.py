"""JSON encoding: orjson (fast), falling back to the standard library for what orjson
refuses, such as integers beyond 64 bits (a `sum` of 1e20 comes back from JSONB as one)."""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), default=str).encode()
