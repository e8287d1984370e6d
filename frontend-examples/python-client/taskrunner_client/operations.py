"""The client's GraphQL operations, built with gql's DSL from schema.graphql.

Each selection is derived from a model in `models.py`, and every model is checked against
the schema first (field names, types, nullability, enum values), so a client that no
longer matches the contract fails at startup with a list of what differs, not later on
a response it cannot read.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from gql import GraphQLRequest
from gql.dsl import (
    DSLField,
    DSLInlineFragment,
    DSLMetaField,
    DSLMutation,
    DSLQuery,
    DSLSchema,
    DSLSelectable,
    DSLSubscription,
    DSLType,
    DSLVariableDefinitions,
    dsl_gql,
)
from graphql import (
    GraphQLInputObjectType,
    GraphQLInterfaceType,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLSchema,
    build_ast_schema,
    get_named_type,
    is_enum_type,
    is_interface_type,
    is_list_type,
    is_object_type,
    is_scalar_type,
    parse,
)
from graphql.utilities import validate_input_value
from pydantic import BaseModel, JsonValue

from .models import EVENT_MODELS, Task, TaskEventBase, Workflow, WorkflowStep

# The repository's contract; `taskrunner export-schema` (`make schema`) writes it.
SCHEMA_PATH = Path(__file__).resolve().parents[3] / "schema.graphql"

# How each scalar of the schema is read.
SCALARS: dict[str, object] = {
    "ID": str,
    "String": str,
    "Int": int,
    "Float": float,
    "Boolean": bool,
    "DateTime": datetime,
    "JSON": JsonValue,
}


class SchemaMismatch(Exception):
    """The client's models do not match the schema."""


def load_schema(path: Path = SCHEMA_PATH) -> GraphQLSchema:
    return build_ast_schema(parse(path.read_text(encoding="utf-8")))


def _optional(annotation: Any) -> tuple[Any, bool]:
    """The annotation without `| None`, and whether None is allowed."""
    if annotation is JsonValue:
        return annotation, True
    if get_origin(annotation) in (Union, types.UnionType):
        args = get_args(annotation)
        rest = [arg for arg in args if arg is not type(None)]
        if len(rest) == 1:
            return rest[0], len(rest) < len(args)
    return annotation, False


def _check_type(where: str, gql_type: GraphQLOutputType, annotation: Any) -> list[str]:
    inner, nullable = _optional(annotation)
    if isinstance(gql_type, GraphQLNonNull):
        gql_type = gql_type.of_type
    elif not nullable:
        return [f"{where} is nullable in the schema, so the model must allow None"]
    if is_list_type(gql_type) != (get_origin(inner) is list):
        return [f"{where}: a list on one side only"]
    if is_list_type(gql_type):
        return _check_type(f"{where}[]", gql_type.of_type, get_args(inner)[0])
    if is_scalar_type(gql_type):
        if SCALARS.get(gql_type.name) is not inner:
            return [f"{where}: the schema's {gql_type} is not read as {inner!r}"]
    elif is_enum_type(gql_type):
        names = set(gql_type.values)
        if not (isinstance(inner, type) and issubclass(inner, Enum)) or names != {
            member.value for member in inner
        }:
            return [f"{where}: the model's {inner!r} is not the enum {sorted(names)}"]
    elif is_object_type(gql_type) or is_interface_type(gql_type):
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            return [f"{where}: the schema's {gql_type} is read as {inner!r}, not a model"]
        return check_model(gql_type, inner)
    return []


def check_model(
    gql_type: GraphQLObjectType | GraphQLInterfaceType, model: type[BaseModel]
) -> list[str]:
    """What differs between `model` and the schema's `gql_type` (empty: nothing)."""
    problems = []
    for name, info in model.model_fields.items():
        alias = info.alias or name
        if alias == "__typename":
            continue
        field = gql_type.fields.get(alias)
        if field is None:
            problems.append(f"{gql_type.name}.{alias} (of {model.__name__}) is not in the schema")
        else:
            problems += _check_type(f"{gql_type.name}.{alias}", field.type, info.annotation)
    return problems


def check_models(schema: GraphQLSchema) -> list[str]:
    """What differs between all the client's models and `schema`."""
    pairs: list[tuple[str, type[BaseModel]]] = [
        ("Task", Task),
        ("Workflow", Workflow),
        ("WorkflowStep", WorkflowStep),
        ("TaskEvent", TaskEventBase),
        *((model.__name__, model) for model in EVENT_MODELS),
    ]
    problems = []
    for type_name, model in pairs:
        gql_type = schema.get_type(type_name)
        if not (is_object_type(gql_type) or is_interface_type(gql_type)):
            problems.append(f"{type_name} is not an object type of the schema")
        else:
            problems += check_model(gql_type, model)
    return problems


def check_input(schema: GraphQLSchema, type_name: str, value: object) -> list[str]:
    """Why `value` is not a valid input object of type `type_name` (empty: it is)."""
    gql_type = schema.get_type(type_name)
    assert isinstance(gql_type, GraphQLInputObjectType), type_name
    problems: list[str] = []
    validate_input_value(
        value,
        GraphQLNonNull(gql_type),
        lambda error, path: problems.append(
            ".".join([type_name, *map(str, path)]) + f": {error.message}"
        ),
    )
    return problems


def _fields(
    ds: DSLSchema, dsl_type: DSLType, model: type[BaseModel], skip: frozenset[str] = frozenset()
) -> list[DSLSelectable]:
    """The selection of `model`'s fields (nested models' too) on `dsl_type`, less `skip`."""
    selection: list[DSLSelectable] = []
    for name, info in model.model_fields.items():
        alias = info.alias or name
        if alias in skip:
            continue
        if alias == "__typename":
            selection.append(DSLMetaField("__typename"))
            continue
        field: DSLField = getattr(dsl_type, alias)  # the DSL checks it against the schema
        inner, _ = _optional(info.annotation)
        if get_origin(inner) is list:
            inner = get_args(inner)[0]
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            nested = get_named_type(field.field.type)
            field = field.select(*_fields(ds, getattr(ds, nested.name), inner))
        selection.append(field)
    return selection


def _event_fields(ds: DSLSchema) -> list[DSLSelectable]:
    """`__typename` and the interface's fields, then one fragment per kind of event."""
    common = frozenset(info.alias or name for name, info in TaskEventBase.model_fields.items())
    selection = [DSLMetaField("__typename"), *_fields(ds, ds.TaskEvent, TaskEventBase)]
    for model in EVENT_MODELS:
        dsl_type = getattr(ds, model.__name__)
        own = _fields(ds, dsl_type, model, skip=common | {"__typename"})
        selection.append(DSLInlineFragment().on(dsl_type).select(*own))
    return selection


def _variables() -> DSLVariableDefinitions:
    return DSLVariableDefinitions()  # type: ignore[no-untyped-call]  # (gql leaves it untyped)


@dataclass(frozen=True)
class Operations:
    """The schema and the checked requests the client sends."""

    schema: GraphQLSchema
    submit_task: GraphQLRequest
    get_task: GraphQLRequest
    task_updates: GraphQLRequest
    submit_workflow: GraphQLRequest
    get_workflow: GraphQLRequest
    workflow_updates: GraphQLRequest

    @classmethod
    def build(cls, schema: GraphQLSchema) -> Operations:
        problems = check_models(schema)
        if problems:
            raise SchemaMismatch(
                "the client does not match the schema:\n  " + "\n  ".join(problems)
            )
        ds = DSLSchema(schema)

        submit = _variables()
        submit_task = DSLMutation(
            ds.Mutation.submitTask.args(task=submit.task, options=submit.options).select(
                *_fields(ds, ds.Task, Task)
            )
        )
        submit_task.variable_definitions = submit

        get = _variables()
        get_task = DSLQuery(ds.Query.task.args(id=get.id).select(*_fields(ds, ds.Task, Task)))
        get_task.variable_definitions = get

        updates = _variables()
        task_updates = DSLSubscription(
            ds.Subscription.taskUpdates.args(id=updates.id, after=updates.after).select(
                *_event_fields(ds)
            )
        )
        task_updates.variable_definitions = updates

        submit_w = _variables()
        submit_workflow = DSLMutation(
            ds.Mutation.submitWorkflow.args(workflow=submit_w.workflow).select(
                *_fields(ds, ds.Workflow, Workflow)
            )
        )
        submit_workflow.variable_definitions = submit_w

        get_w = _variables()
        get_workflow = DSLQuery(
            ds.Query.workflow.args(id=get_w.id).select(*_fields(ds, ds.Workflow, Workflow))
        )
        get_workflow.variable_definitions = get_w

        w_updates = _variables()
        workflow_updates = DSLSubscription(
            ds.Subscription.workflowUpdates.args(id=w_updates.id, after=w_updates.after).select(
                *_event_fields(ds)
            )
        )
        workflow_updates.variable_definitions = w_updates

        return cls(
            schema,
            submit_task=dsl_gql(SubmitTask=submit_task),
            get_task=dsl_gql(GetTask=get_task),
            task_updates=dsl_gql(TaskUpdates=task_updates),
            submit_workflow=dsl_gql(SubmitWorkflow=submit_workflow),
            get_workflow=dsl_gql(GetWorkflow=get_workflow),
            workflow_updates=dsl_gql(WorkflowUpdates=workflow_updates),
        )

    def request(self, operation: GraphQLRequest, **variables: object) -> GraphQLRequest:
        """`operation` with these variables."""
        return GraphQLRequest(operation, variable_values=dict(variables))
