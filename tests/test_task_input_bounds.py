"""Every input of every task type is bounded, and says so in its JSON Schema (what
`taskTypes` publishes): numbers have a minimum and a maximum, strings a maxLength, arrays a
maxItems (and bounded items), maps a maxProperties. No submission can then make a worker
allocate, loop or sleep without limit."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, HttpUrl

from workers.catalog import catalog

Schema = dict[str, Any]


def unbounded(
    schema: Schema, path: str, defs: Schema, seen: frozenset[str] = frozenset()
) -> list[str]:
    """The paths under `schema` whose values have no bound, each with what is missing."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name in seen:  # a recursive model: an unbounded depth
            return [f"{path}: recursive reference to {name}"]
        target = {**defs[name], **{k: v for k, v in schema.items() if k != "$ref"}}
        return unbounded(target, path, defs, seen | {name})
    problems: list[str] = []
    alternatives = [s for key in ("anyOf", "oneOf", "allOf") for s in schema.get(key, [])]
    for alternative in alternatives:
        problems += unbounded(alternative, path, defs, seen)
    if "enum" in schema or "const" in schema:
        return problems
    types = schema.get("type")
    if types is None:
        return problems if alternatives else [*problems, f"{path}: no type (any value)"]
    for kind in types if isinstance(types, list) else [types]:
        problems += _unbounded_of(kind, schema, path, defs, seen)
    return problems


def _number(kind: str, schema: Schema, path: str, defs: Schema, seen: frozenset[str]) -> list[str]:
    problems = []
    if "maximum" not in schema and "exclusiveMaximum" not in schema:
        problems.append(f"{path}: {kind} without maximum")
    if "minimum" not in schema and "exclusiveMinimum" not in schema:
        problems.append(f"{path}: {kind} without minimum")
    return problems


def _string(kind: str, schema: Schema, path: str, defs: Schema, seen: frozenset[str]) -> list[str]:
    return [] if "maxLength" in schema else [f"{path}: string without maxLength"]


def _array(kind: str, schema: Schema, path: str, defs: Schema, seen: frozenset[str]) -> list[str]:
    problems = [] if "maxItems" in schema else [f"{path}: array without maxItems"]
    for i, item in enumerate(schema.get("prefixItems", [])):
        problems += unbounded(item, f"{path}[{i}]", defs, seen)
    items = schema.get("items", {})
    if items is not False:
        problems += unbounded(items, f"{path}[]", defs, seen)
    return problems


def _object(kind: str, schema: Schema, path: str, defs: Schema, seen: frozenset[str]) -> list[str]:
    problems = []
    for name, prop in schema.get("properties", {}).items():
        problems += unbounded(prop, f"{path}.{name}", defs, seen)
    extra = schema.get("additionalProperties", False)
    if extra is not False:
        if "maxProperties" not in schema:
            problems.append(f"{path}: object without maxProperties")
        if isinstance(extra, dict):
            problems += unbounded(extra, f"{path}{{}}", defs, seen)
    return problems


def _bounded(kind: str, schema: Schema, path: str, defs: Schema, seen: frozenset[str]) -> list[str]:
    return []


CHECKS = {
    "integer": _number,
    "number": _number,
    "string": _string,
    "array": _array,
    "object": _object,
    "boolean": _bounded,
    "null": _bounded,
}


def _unbounded_of(
    kind: str, schema: Schema, path: str, defs: Schema, seen: frozenset[str]
) -> list[str]:
    check = CHECKS.get(kind)
    if check is None:
        return [f"{path}: unknown type {kind!r}"]
    return check(kind, schema, path, defs, seen)


def unbounded_fields(name: str, model: type[BaseModel]) -> list[str]:
    schema = model.model_json_schema()
    return unbounded(schema, name, schema.get("$defs", {}))


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
        "search": {"query": "q", "sources": ["web"] * 11},
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
