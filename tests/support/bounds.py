"""Whether a JSON Schema bounds every value it admits: numbers a minimum and a maximum,
strings a maxLength, arrays a maxItems (and bounded items), maps a maxProperties."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

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
