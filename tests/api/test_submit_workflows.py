"""submitWorkflows: several workflows in one call, all or none. Each answer is the
workflow submitWorkflow would give, in order; an error names `workflows[i]` and writes
nothing; the batch is bounded by MAX_BATCH_SIZE workflows and MAX_WORKFLOW_STEPS steps."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from gql.transport.exceptions import TransportQueryError
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.stack import Stack

SUBMIT = """
mutation($w: [WorkflowInput!]!) {
  submitWorkflows(workflows: $w) { id name status stepCount idempotencyKey }
}"""


def chain(name: str, *keys: str, key: str | None = None) -> dict[str, Any]:
    steps = [
        {"key": k, "task": {"echo": {"message": k}}, "dependsOn": [keys[i - 1]] if i else []}
        for i, k in enumerate(keys)
    ]
    return {"name": name, "steps": steps, "idempotencyKey": key}


async def counts(engine: AsyncEngine) -> tuple[int, int]:
    async with engine.connect() as conn:
        workflows = await conn.scalar(sa.text("SELECT count(*) FROM workflow"))
        tasks = await conn.scalar(sa.text("SELECT count(*) FROM task"))
    return int(workflows or 0), int(tasks or 0)


async def error_of(api: Stack, workflows: list[dict[str, Any]]) -> dict[str, Any]:
    with pytest.raises(TransportQueryError) as err:
        await api.execute(SUBMIT, w=workflows)
    assert err.value.errors
    return dict(err.value.errors[0])


async def test_several_workflows_in_one_call_come_back_in_order(
    api: Stack, engine: AsyncEngine
) -> None:
    given = [chain("one", "a", "b"), chain("two", "x"), chain("again", "a", key="k")]
    given.append(chain("same key", "z", key="k"))
    found = (await api.execute(SUBMIT, w=given))["submitWorkflows"]
    assert [w["name"] for w in found] == ["one", "two", "again", "again"]
    assert [w["stepCount"] for w in found] == [2, 1, 1, 1]
    assert found[3]["id"] == found[2]["id"]  # one key: the first workflow
    assert len({w["id"] for w in found}) == 3
    assert await counts(engine) == (3, 4)


async def test_a_bad_workflow_names_its_place_and_nothing_is_written(
    api: Stack, engine: AsyncEngine
) -> None:
    bad = chain("cycle", "a", "b")
    bad["steps"][0]["dependsOn"] = ["b"]
    error = await error_of(api, [chain("fine", "a"), bad])
    assert error["extensions"]["code"] == "BAD_INPUT"
    assert error["extensions"]["field"] == "workflows[1].steps[0].dependsOn"
    assert "a -> b -> a" in error["message"]
    unknown = chain("unknown", "a")
    unknown["steps"][0]["dependsOn"] = ["nope"]
    error = await error_of(api, [unknown])
    assert error["extensions"]["field"] == "workflows[0].steps[0].dependsOn"
    assert await counts(engine) == (0, 0)


async def test_a_batch_is_bounded_in_workflows_and_in_steps(
    api: Stack, engine: AsyncEngine
) -> None:
    error = await error_of(api, [])
    assert error["extensions"] == {"code": "LIMIT_EXCEEDED", "field": "workflows"}
    limits = (await api.execute("{ limits { maxBatchSize maxWorkflowSteps } }"))["limits"]
    too_many = [chain(f"w{i}", "a") for i in range(limits["maxBatchSize"] + 1)]
    error = await error_of(api, too_many)
    assert error["extensions"] == {"code": "LIMIT_EXCEEDED", "field": "workflows"}
    assert "MAX_BATCH_SIZE" in error["message"]
    per = limits["maxWorkflowSteps"] // 2 + 1  # two of these pass the limit together
    big = [chain(f"big{i}", *(f"s{j}" for j in range(per))) for i in range(2)]
    error = await error_of(api, big)
    assert error["extensions"] == {"code": "LIMIT_EXCEEDED", "field": "workflows"}
    assert "MAX_WORKFLOW_STEPS" in error["message"]
    assert await counts(engine) == (0, 0)


async def test_bindings_that_can_never_apply_are_bad_input(api: Stack, engine: AsyncEngine) -> None:
    """Appending to a field that is not a list, and a path with an empty part, are refused
    when submitted (not when the step would run)."""
    for bind, field, hint in (
        ({"field": "message[]", "step": "a"}, "field", "is not one"),
        ({"field": "message", "step": "a", "path": "x..y"}, "path", "empty part"),
    ):
        workflow = chain("w", "a", "b")
        workflow["steps"][1]["bind"] = [bind]
        error = await error_of(api, [workflow])
        assert error["extensions"] == {
            "code": "BAD_INPUT",
            "field": f"workflows[0].steps[1].bind[0].{field}",
        }
        assert hint in error["message"]
    assert await counts(engine) == (0, 0)


async def test_a_workflows_cursor_before_year_1_in_utc_is_bad_input(api: Stack) -> None:
    """An edited cursor whose time PostgreSQL cannot take is BAD_INPUT, not INTERNAL."""
    raw = f"0001-01-01T00:00:00+05:30|{uuid.uuid4()}".encode()
    for listing in ("workflows", "schedules"):
        with pytest.raises(TransportQueryError) as err:
            await api.execute(
                f"query($a: String) {{ {listing}(after: $a) {{ edges {{ cursor }} }} }}",
                a=base64.urlsafe_b64encode(raw).decode(),
            )
        assert err.value.errors[0]["extensions"] == {"code": "BAD_INPUT", "field": "after"}
