"""The pure parts of workflows (taskrunner.dag): a submitted graph's checks, cycles,
bindings of a step's input to its parents' results, and what the steps' states call for
(`plan`) and how the workflow ends (`outcome`)."""

from __future__ import annotations

import pytest

from taskrunner.dag import (
    BindError,
    Binding,
    Node,
    Plan,
    StepFailurePolicy,
    StepState,
    WorkflowStatus,
    bind,
    check_graph,
    find_cycle,
    outcome,
    plan,
    resolve,
)
from taskrunner.errors import BadInput
from taskrunner.states import TaskStatus
from taskrunner.transitions import TaskErrorCode

Q, R, S, F, C = (
    TaskStatus.QUEUED,
    TaskStatus.RUNNING,
    TaskStatus.SUCCEEDED,
    TaskStatus.FAILED,
    TaskStatus.CANCELLED,
)
FAIL, GO_ON = StepFailurePolicy.FAIL_WORKFLOW.value, StepFailurePolicy.CONTINUE.value


def refused(nodes: list[Node], most: int = 10) -> BadInput:
    with pytest.raises(BadInput) as caught:
        check_graph(nodes, most=most)
    return caught.value


# --- check_graph ------------------------------------------------------------------------------


def test_a_valid_graph_passes() -> None:
    check_graph(
        [
            Node("a"),
            Node("b", ("a",), (Binding("x", "a", "total"),)),
            Node("c", ("a", "b"), (Binding("xs", "b", None, True), Binding("y", "a"))),
        ],
        most=3,
    )


def test_no_step_is_refused() -> None:
    error = refused([])
    assert error.field == "workflow.steps"
    assert error.message == "workflow.steps: give at least one step"


def test_more_steps_than_the_limit_are_refused() -> None:
    check_graph([Node(str(i)) for i in range(3)], most=3)
    error = refused([Node(str(i)) for i in range(4)], most=3)
    assert error.field == "workflow.steps"
    assert "4 steps, over MAX_WORKFLOW_STEPS (3)" in error.message


def test_an_empty_key_is_refused() -> None:
    error = refused([Node("a"), Node("")])
    assert error.field == "workflow.steps[1].key"


def test_a_duplicate_key_names_both_steps() -> None:
    error = refused([Node("a"), Node("b"), Node("a")])
    assert error.field == "workflow.steps[2].key"
    assert "'a' is the key of steps[0] too" in error.message


def test_an_unknown_parent_is_refused_with_the_keys_there_are() -> None:
    error = refused([Node("b"), Node("a", ("b", "zz"))])
    assert error.field == "workflow.steps[1].dependsOn"
    assert "'zz' is not a step of this workflow (its keys: a, b)" in error.message


def test_a_step_depending_on_itself_is_refused() -> None:
    error = refused([Node("a"), Node("b", ("a", "b"))])
    assert error.field == "workflow.steps[1].dependsOn"
    assert "step 'b' depends on itself" in error.message


def test_a_binding_from_a_step_that_is_not_a_parent_is_refused() -> None:
    error = refused(
        [
            Node("a"),
            Node("b"),
            Node("c", ("a",), (Binding("x", "a"), Binding("y", "b", "total"))),
        ]
    )
    assert error.field == "workflow.steps[2].bind[1].step"
    assert "'b' is not in dependsOn of step 'c'" in error.message


def test_a_cycle_is_refused_and_named() -> None:
    error = refused([Node("a", ("b",)), Node("b", ("c",)), Node("c", ("a",)), Node("d", ("a",))])
    assert error.field == "workflow.steps[0].dependsOn"
    assert error.message.endswith("in a cycle: a -> b -> c -> a")


def test_a_cycle_behind_other_steps_is_named_from_its_first_step() -> None:
    error = refused([Node("d", ("b",)), Node("x"), Node("b", ("c",)), Node("c", ("b", "x"))])
    assert error.field == "workflow.steps[2].dependsOn"
    assert error.message.endswith("in a cycle: b -> c -> b")


# --- find_cycle -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "edges",
    [
        {},
        {"a": []},
        {"a": [], "b": ["a"], "c": ["a", "b"], "d": ["b", "c"]},  # diamonds share parents
        {"d": ["b", "c"], "c": ["a"], "b": ["a"], "a": []},
        {"a": ["outside"]},  # a key that is no node: no edges of its own
    ],
)
def test_a_dag_has_no_cycle(edges: dict[str, list[str]]) -> None:
    assert find_cycle(edges) is None


@pytest.mark.parametrize(
    ("edges", "cycle"),
    [
        ({"a": ["a"]}, ["a", "a"]),
        ({"a": ["b"], "b": ["a"]}, ["a", "b", "a"]),
        ({"a": ["b"], "b": ["c"], "c": ["a"]}, ["a", "b", "c", "a"]),
        ({"x": [], "y": ["x", "z"], "z": ["w"], "w": ["y"]}, ["y", "z", "w", "y"]),
        ({"s": ["a"], "a": ["b"], "b": ["a"]}, ["a", "b", "a"]),
    ],
)
def test_a_cycle_is_found_as_a_closed_path(edges: dict[str, list[str]], cycle: list[str]) -> None:
    assert find_cycle(edges) == cycle


# --- resolve and bind -------------------------------------------------------------------------

RESULT = {"total": 6, "items": [{"url": "u0"}, {"url": "u1"}], "nested": {"deep": [1, [2, 3]]}}


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (None, RESULT),
        ("", RESULT),
        ("total", 6),
        ("items.1.url", "u1"),
        ("items.-1", {"url": "u1"}),
        ("nested.deep.1.0", 2),
    ],
)
def test_resolve_walks_dotted_paths(path: str | None, value: object) -> None:
    assert resolve(RESULT, path, "p") == value


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("missing", "step 'p': the result has no 'missing' (its keys: total, items, nested)"),
        ("items.2", "step 'p': items has no '2' (it is a list of 2)"),
        ("items.x", "step 'p': items has no 'x' (it is a list of 2)"),
        ("total.x", "step 'p': total has no 'x' (it is int 6)"),
        ("items.0.url.x", "step 'p': items.0.url has no 'x' (it is str 'u0')"),
    ],
)
def test_resolve_names_where_a_path_ends(path: str, message: str) -> None:
    with pytest.raises(BindError) as caught:
        resolve(RESULT, path, "p")
    assert str(caught.value) == message


def test_bind_sets_and_appends_fields_in_order_leaving_the_submitted_input() -> None:
    submitted = {"message": "m", "values": [1]}
    bound = bind(
        submitted,
        [
            Binding("values", "a", "total", append=True),
            Binding("values", "b", "items.0.url", append=True),
            Binding("message", "b", "items.1.url"),
            Binding("whole", "a"),
            Binding("fresh", "a", "total", append=True),
        ],
        {"a": {"total": 6}, "b": RESULT},
    )
    assert bound == {
        "message": "u1",
        "values": [1, 6, "u0"],
        "whole": {"total": 6},
        "fresh": [6],
    }
    assert submitted == {"message": "m", "values": [1]}


def test_bind_refuses_to_append_to_a_field_that_is_not_a_list() -> None:
    with pytest.raises(BindError) as caught:
        bind({"values": 3}, [Binding("values", "a", append=True)], {"a": 1})
    assert str(caught.value) == "values[]: the input's 'values' is not a list"


def test_bind_reports_a_missing_path() -> None:
    with pytest.raises(BindError) as caught:
        bind({}, [Binding("x", "a", "total")], {"a": {"sum": 1}})
    assert str(caught.value) == "step 'a': the result has no 'total' (its keys: sum)"


# --- plan and outcome ---------------------------------------------------------------------------


def graph(**steps: tuple[TaskStatus, tuple[str, ...]]) -> dict[str, StepState]:
    """Steps in order: a QUEUED step with parents waits for them (else it is ready)."""
    return {
        k: StepState(status, status is Q and bool(parents), parents)
        for k, (status, parents) in steps.items()
    }


def test_plan_readies_a_step_once_all_its_parents_succeeded() -> None:
    states = graph(
        a=(S, ()),
        b=(S, ()),
        c=(R, ()),
        both=(Q, ("a", "b")),
        half=(Q, ("a", "c")),
        ready=(Q, ()),  # not waiting: it is in the queue already
    )
    for policy in (FAIL, GO_ON):
        assert plan(states, policy, False) == Plan(ready=["both"])


def test_plan_with_nothing_to_do_is_false() -> None:
    todo = plan(graph(a=(R, ()), b=(Q, ("a",))), FAIL, False)
    assert todo == Plan() and not todo


def test_fail_workflow_cancels_every_queued_step() -> None:
    states = graph(
        a=(F, ()),
        b=(R, ()),
        c=(Q, ()),  # ready, not started
        d=(Q, ("b",)),
        e=(S, ()),
        f=(Q, ("e",)),  # its parent SUCCEEDED: not made ready, cancelled
    )
    todo = plan(states, FAIL, False)
    message = (
        "step 'a' ended FAILED, and the workflow's onStepFailure is FAIL_WORKFLOW: the steps "
        "that had not started are cancelled"
    )
    assert todo.ready == []
    assert todo.cancel == {k: (TaskErrorCode.WORKFLOW_FAILED, message) for k in "cdf"}


def test_fail_workflow_names_a_failed_step_before_a_cancelled_one() -> None:
    todo = plan(graph(a=(C, ()), b=(F, ()), c=(Q, ())), FAIL, False)
    assert todo.cancel["c"][1].startswith("step 'b' ended FAILED")
    todo = plan(graph(a=(C, ()), b=(Q, ("a",))), FAIL, False)
    assert todo.cancel["b"][1].startswith("step 'a' ended CANCELLED")


def test_continue_cancels_the_transitive_dependents_only() -> None:
    states = graph(
        a=(F, ()),
        b=(Q, ("a",)),
        c=(Q, ("b",)),
        d=(Q, ("c", "x")),
        x=(S, ()),
        y=(Q, ("x",)),  # an independent branch: made ready
        z=(R, ()),
        w=(Q, ("z",)),  # an independent branch still waiting
        r=(Q, ()),  # ready: left alone
    )
    todo = plan(states, GO_ON, False)
    assert todo.ready == ["y"]
    assert todo.cancel == {
        "b": (TaskErrorCode.DEPENDENCY_FAILED, "step 'a', which it depends on, ended FAILED"),
        "c": (
            TaskErrorCode.DEPENDENCY_FAILED,
            "step 'a', which it depends on (through the steps between them), ended FAILED",
        ),
        "d": (
            TaskErrorCode.DEPENDENCY_FAILED,
            "step 'a', which it depends on (through the steps between them), ended FAILED",
        ),
    }


def test_continue_finds_dependents_listed_before_their_parents() -> None:
    states = {
        "late": StepState(Q, True, ("mid",)),
        "mid": StepState(Q, True, ("root",)),
        "root": StepState(C, False, ()),
    }
    todo = plan(states, GO_ON, False)
    assert set(todo.cancel) == {"late", "mid"}
    assert todo.cancel["mid"][1] == "step 'root', which it depends on, ended CANCELLED"


def test_cancel_requested_cancels_every_queued_step_without_a_code() -> None:
    states = graph(a=(S, ()), b=(Q, ("a",)), c=(R, ()), d=(Q, ()), e=(F, ()))
    for policy in (FAIL, GO_ON):
        todo = plan(states, policy, True)
        assert todo.ready == []
        assert todo.cancel == {k: (None, "cancelWorkflow cancelled its workflow") for k in "bd"}


@pytest.mark.parametrize(
    ("statuses", "cancel_requested", "end"),
    [
        ([S, S], False, WorkflowStatus.SUCCEEDED),
        ([S, F, C], False, WorkflowStatus.FAILED),
        ([S, C], False, WorkflowStatus.CANCELLED),
        ([S, S], True, WorkflowStatus.CANCELLED),
        ([F, S], True, WorkflowStatus.CANCELLED),
        ([S, Q], False, None),
        ([F, R], False, None),
        ([C, Q], True, None),
    ],
)
def test_outcome(
    statuses: list[TaskStatus], cancel_requested: bool, end: WorkflowStatus | None
) -> None:
    states = {str(i): StepState(s, False) for i, s in enumerate(statuses)}
    assert outcome(states, cancel_requested) is end
