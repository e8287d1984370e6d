"""The Python client and schema.graphql cannot drift apart: its operations validate against
the schema, every root field a client calls is used by one of them, and the committed
taskrunner_client/api.py is exactly what turms generates from both (`make schema`)."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from graphql import (
    FieldNode,
    GraphQLSchema,
    OperationDefinitionNode,
    build_ast_schema,
    parse,
    validate,
)
from pydantic import BaseModel, TypeAdapter, ValidationError

from tests.support.environment import repo_root
from tests.support.python_client import CLIENT_DIR, GENERATED, OPERATIONS, imported_client

SCHEMA_PATH = repo_root() / "schema.graphql"

# Root fields no operation of the client uses, each with why. None today: the client
# calls every root field of Query, Mutation and Subscription.
NOT_IN_THE_CLIENT: dict[str, str] = {}

NO_TURMS = (
    "turms (the client's generator) is not installed in this environment: it comes with "
    "the project's dev extra"
)


@pytest.fixture(scope="module")
def client() -> Iterator[ModuleType]:
    with imported_client() as module:
        yield module


@pytest.fixture(scope="module")
def schema() -> GraphQLSchema:
    return build_ast_schema(parse(SCHEMA_PATH.read_text(encoding="utf-8")))


def test_every_operation_validates_against_the_schema(schema: GraphQLSchema) -> None:
    document = parse(OPERATIONS.read_text(encoding="utf-8"))
    assert validate(schema, document) == []


def test_every_root_field_is_used_by_an_operation(schema: GraphQLSchema) -> None:
    document = parse(OPERATIONS.read_text(encoding="utf-8"))
    used = {
        f"{operation.operation.value.capitalize()}.{selection.name.value}"
        for operation in document.definitions
        if isinstance(operation, OperationDefinitionNode)
        for selection in operation.selection_set.selections
        if isinstance(selection, FieldNode)
    }
    roots = [schema.query_type, schema.mutation_type, schema.subscription_type]
    fields = {f"{root.name}.{name}" for root in roots if root for name in root.fields}
    assert fields - used - set(NOT_IN_THE_CLIENT) == set(), "root fields no operation uses"
    assert set(NOT_IN_THE_CLIENT) <= fields, "an exclusion names a field the schema lacks"
    assert set(NOT_IN_THE_CLIENT) & used == set(), "an excluded field is used after all"


def _operation_models(api: ModuleType) -> dict[str, type[BaseModel]]:
    """The generated model of each operation (it has `Arguments` and `Meta.document`)."""
    return {
        name: model
        for name, model in vars(api).items()
        if isinstance(model, type)
        and issubclass(model, BaseModel)
        and hasattr(model, "Arguments")
        and hasattr(getattr(model, "Meta", None), "document")
    }


def test_the_generated_client_has_a_method_per_operation_and_its_documents_validate(
    client: ModuleType, schema: GraphQLSchema
) -> None:
    document = parse(OPERATIONS.read_text(encoding="utf-8"))
    names = {
        operation.name.value
        for operation in document.definitions
        if isinstance(operation, OperationDefinitionNode) and operation.name
    }
    models = _operation_models(client.api)
    assert set(models) == names
    for name, model in models.items():
        sent = parse(model.Meta.document)  # type: ignore[attr-defined]
        assert validate(schema, sent) == [], name
    methods = {name for name in vars(client.Operations) if not name.startswith("_")}
    snake = {"".join(f"_{c.lower()}" if c.isupper() else c for c in n).lstrip("_") for n in names}
    assert methods == snake


def _generate(client_dir: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """api.py as turms generates it from `client_dir`'s graphql.config.yaml (which reads
    ../../schema.graphql), written into `out`: what `make schema` runs."""
    if importlib.util.find_spec("turms") is None:
        pytest.skip(NO_TURMS)
    from turms.run import gen  # (only where the generator is installed)

    monkeypatch.chdir(client_dir)
    gen("graphql.config.yaml", strict=True, overwrite_path=str(out))
    return (out / "api.py").read_text(encoding="utf-8")


def test_the_committed_client_is_what_make_schema_generates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    generated = _generate(CLIENT_DIR, tmp_path, monkeypatch)
    assert generated == GENERATED.read_text(encoding="utf-8"), (
        "taskrunner_client/api.py is not what schema.graphql and operations.graphql "
        "generate: run `make schema`"
    )


def _beside_a_schema(tmp_path: Path, schema_text: str) -> Path:
    """A copy of the client's generator inputs, laid out as in the repository, beside a
    schema.graphql of `schema_text`."""
    copy = tmp_path / "repo" / "frontend-examples" / "python-client"
    copy.mkdir(parents=True)
    for name in ("graphql.config.yaml", "operations.graphql"):
        shutil.copy(CLIENT_DIR / name, copy / name)
    (tmp_path / "repo" / "schema.graphql").write_text(schema_text, encoding="utf-8")
    return copy


def test_a_schema_change_without_make_schema_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The comparison above fails when the schema changes under the client: a field's type
    changes the generated model; a root field renamed fails the generation."""
    text = SCHEMA_PATH.read_text(encoding="utf-8")
    before, after = "  progressMessage: String\n", "  progressMessage: Int\n"
    assert text.count(before) == 1
    changed = _beside_a_schema(tmp_path / "a", text.replace(before, after))
    generated = _generate(changed, tmp_path / "a" / "out", monkeypatch)
    committed = GENERATED.read_text(encoding="utf-8")
    assert "progress_message: int | None" in generated
    assert "progress_message: int | None" not in committed

    trigger = "  triggerSchedule(id: ID!): Task!\n"
    assert text.count(trigger) == 1
    renamed = text.replace(trigger, "  runSchedule(id: ID!): Task!\n")
    gone = _beside_a_schema(tmp_path / "b", renamed)
    from turms.errors import GenerationError  # (_generate skipped without it)

    with pytest.raises(GenerationError) as failed:
        _generate(gone, tmp_path / "b" / "out", monkeypatch)
    assert "Cannot query field 'triggerSchedule' on type 'Mutation'" in str(failed.value.__cause__)
    assert not (tmp_path / "b" / "out" / "api.py").exists()


def test_a_task_given_as_json_becomes_its_typed_input(
    client: ModuleType, schema: GraphQLSchema
) -> None:
    spec = schema.get_type("TaskSpecInput")
    assert spec is not None and hasattr(spec, "fields")
    assert set(client.TASK_TYPES) == set(spec.fields)  # every task type, by its field
    sleep = client.task_spec({"sleep": {"seconds": 2}})
    assert sleep == client.SleepInput(seconds=2)
    wire = TypeAdapter(client.api.SubmitTask.Arguments).dump_python(
        client.api.SubmitTask.Arguments(task=sleep), mode="json", by_alias=True, exclude_unset=True
    )
    assert wire == {"task": {"sleep": {"seconds": 2.0}}}  # unset fields: the server's default
    scrape = client.task_spec({"webScrape": {"url": "http://127.0.0.1/", "maxBytes": 10}})
    assert isinstance(scrape, client.WebScrapeInput) and scrape.max_bytes == 10
    with pytest.raises(ValueError, match=r"unknown task type 'slep'\. Did you mean 'sleep'\?"):
        client.task_spec({"slep": {"seconds": 1}})
    with pytest.raises(ValidationError, match="secnds"):  # an unknown field is refused
        client.task_spec({"sleep": {"secnds": 1}})
    with pytest.raises(ValueError, match="one of"):
        client.task_spec({"sleep": {"seconds": 1}, "echo": {"message": "x"}})


def test_an_event_of_a_kind_the_client_does_not_know_is_still_read(client: ModuleType) -> None:
    read = client.api.TaskUpdates.model_validate
    known = read(
        {
            "taskUpdates": {
                "__typename": "StepReady",
                "cursor": "c",
                "taskId": "t",
                "at": "2026-01-01T00:00:00Z",
                "actor": None,
                "workflowId": "w",
                "stepKey": "d",
            }
        }
    ).task_updates
    assert isinstance(known, client.TaskEventStepReady) and known.step_key == "d"
    unknown = read({"taskUpdates": {"__typename": "TaskPaused", "cursor": "c"}}).task_updates
    assert not isinstance(unknown, client.TaskEventBase)
    assert unknown.typename == "TaskPaused"
