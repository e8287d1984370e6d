"""schema.graphql is generated (`taskrunner export-schema`); it must match the code."""

from __future__ import annotations

from graphql import build_schema

from taskrunner.cli import SCHEMA_FILE, export_schema


def test_checked_in_schema_matches_the_code() -> None:
    assert SCHEMA_FILE.read_text() == export_schema(), (
        "schema.graphql is stale: run `make schema` (taskrunner export-schema) and commit it"
    )


def test_schema_has_the_contract_names() -> None:
    schema = build_schema(SCHEMA_FILE.read_text())
    query, mutation, subscription = (
        schema.query_type,
        schema.mutation_type,
        schema.subscription_type,
    )
    assert query and mutation and subscription
    assert {"task", "tasks", "taskTypes"} <= set(query.fields)
    assert {"submitTask", "submitTasks", "cancelTask"} <= set(mutation.fields)
    assert {"taskUpdates"} <= set(subscription.fields)
    spec = schema.get_type("TaskSpecInput")
    assert spec is not None and getattr(spec, "is_one_of", False)
    assert {"echo", "sleep", "sum"} <= set(spec.fields)  # type: ignore[attr-defined]
    event = schema.get_type("TaskEvent")
    assert event is not None
    assert {t.name for t in schema.get_possible_types(event)} >= {  # type: ignore[arg-type]
        "StatusChanged",
        "ProgressReported",
        "LogAppended",
    }
