"""Every input of every task type is bounded, and says so in its JSON Schema (what
`taskTypes` publishes): numbers have a minimum and a maximum, strings a maxLength, arrays a
maxItems (and bounded items), maps a maxProperties. No submission can then make a worker
allocate, loop or sleep without limit."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, HttpUrl

from tests.support.bounds import unbounded_fields
from workers.catalog import catalog


def test_every_input_of_every_task_type_is_bounded() -> None:
    types = catalog()
    assert {"echo", "sleep", "sum", "report", "webScrape", "search", "chatter"} <= set(types)
    problems = [p for name, t in types.items() for p in unbounded_fields(name, t.input_model)]
    assert problems == [], "unbounded task inputs (add ge/le, max_length):\n" + "\n".join(problems)


class _Inner(BaseModel):
    weight: float = Field(ge=0)


class _Careless(BaseModel):
    """Everything the check must catch, and some it must let through."""

    count: int
    name: str
    tags: list[str] = Field(max_length=3)
    scores: dict[str, int] = Field(default_factory=dict)
    inner: _Inner
    maybe: int | None = Field(default=None, ge=0)
    anything: Any = None
    url: HttpUrl
    ok_int: int = Field(ge=0, le=10)
    ok_flag: bool = False
    ok_list: list[bytes] = Field(max_length=2, default_factory=list)


def test_the_check_names_each_unbounded_field() -> None:
    problems = unbounded_fields("careless", _Careless)
    assert problems == [
        "careless.count: integer without maximum",
        "careless.count: integer without minimum",
        "careless.name: string without maxLength",
        "careless.tags[]: string without maxLength",
        "careless.scores: object without maxProperties",
        "careless.scores{}: integer without maximum",
        "careless.scores{}: integer without minimum",
        "careless.inner.weight: number without maximum",
        "careless.maybe: integer without maximum",
        "careless.anything: no type (any value)",
        "careless.ok_list[]: string without maxLength",
    ], problems


def test_the_bounds_are_enforced_not_only_published() -> None:
    """A few of the published bounds, checked against validation."""
    types = catalog()
    too_much: dict[str, dict[str, Any]] = {
        "sleep": {"seconds": 86_401},
        "report": {"rows": 2_000_001},
        "sum": {"numbers": [1e301]},
        "search": {"query": "q", "sources": ["brave"] * 11},
        "webScrape": {"url": "https://example.com/" + "a" * 2100},
        "chatter": {"log_lines": 10_001},
    }
    for name, data in too_much.items():
        model = types[name].input_model
        try:
            model.model_validate(data)
        except ValueError:
            continue
        raise AssertionError(f"{name} accepted {str(data)[:80]}")
