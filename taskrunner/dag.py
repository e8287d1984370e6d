"""A workflow's graph and what a step's end does to it.

- `check_graph`: a submitted graph is checked whole (duplicate and unknown keys, cycles,
  bindings to steps that are not parents) before anything is written.
- `plan` and `outcome` (pure): given every step's state, which waiting steps are ready,
  which are cancelled by a failure (onStepFailure), and whether the workflow has ended.
- `settle`: run by the journal in the transaction that ends a step (journal.record), under
  the workflow row's lock, so the settlings of one workflow's steps follow one another: the
  one that sees the last parent SUCCEEDED (its own change, or one committed before it took
  the lock) makes the child ready, exactly once, in the same transaction. Ready steps are
  enqueued once it commits (`AfterCommit`); a ready step Redis lost is enqueued by the
  reconciler like any QUEUED task.

A step is an ordinary task: its moves are transitions (`step_ready`, `step_cancelled`,
`step_refused`, `workflow_changed`), each a conditional change plus an event.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import asyncpg

from taskrunner import actors, fastpath, queue, transitions
from taskrunner.actors import Actor
from taskrunner.changes import WAITING_PARENTS, Change
from taskrunner.errors import BadInput
from taskrunner.events import Event, EventKind
from taskrunner.states import TaskStatus
from taskrunner.transitions import TaskErrorCode


class WorkflowStatus(StrEnum):
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class StepFailurePolicy(StrEnum):
    FAIL_WORKFLOW = "FAIL_WORKFLOW"  # a failed step cancels every step not started
    CONTINUE = "CONTINUE"  # only the failed step's dependents are cancelled


@dataclass(frozen=True)
class Binding:
    """Set the input field `field` (appending to it: `append`) from the result of the
    parent step `step`, or from `path` into it (dotted: `total`, `items.0.url`)."""

    field: str
    step: str
    path: str | None = None
    append: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"field": self.field, "step": self.step, "path": self.path, "append": self.append}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Binding:
        return cls(data["field"], data["step"], data.get("path"), bool(data.get("append")))


@dataclass
class AfterCommit:
    """What a transaction that settled steps needs once committed: its events published,
    its ready steps enqueued."""

    events: list[Event] = field(default_factory=list)
    jobs: list[queue.Job] = field(default_factory=list)

    def clear(self) -> None:
        self.events.clear()
        self.jobs.clear()


# --- the graph, checked when submitted ------------------------------------------------------


@dataclass(frozen=True)
class Node:
    key: str
    depends_on: tuple[str, ...] = ()
    bindings: tuple[Binding, ...] = ()


def check_graph(nodes: Sequence[Node], *, most: int, prefix: str = "workflow.steps") -> None:
    """BAD_INPUT naming the step, for: no step, more than `most` (MAX_WORKFLOW_STEPS), a
    duplicate key, a dependsOn naming no step (or the step itself), a binding from a step
    that is not a parent, and a cycle (named)."""
    if not nodes:
        raise BadInput(f"{prefix}: give at least one step", field=prefix)
    if len(nodes) > most:
        raise BadInput(
            f"{prefix}: {len(nodes)} steps, over MAX_WORKFLOW_STEPS ({most}); split the workflow",
            field=prefix,
        )
    seen: dict[str, int] = {}
    for i, node in enumerate(nodes):
        where = f"{prefix}[{i}]"
        if not node.key:
            raise BadInput(f"{where}.key: give a key", field=f"{where}.key")
        if node.key in seen:
            raise BadInput(
                f"{where}.key: {node.key!r} is the key of steps[{seen[node.key]}] too; keys "
                "are unique in a workflow",
                field=f"{where}.key",
            )
        seen[node.key] = i
    for i, node in enumerate(nodes):
        where = f"{prefix}[{i}]"
        for parent in node.depends_on:
            if parent == node.key:
                raise BadInput(
                    f"{where}.dependsOn: step {node.key!r} depends on itself",
                    field=f"{where}.dependsOn",
                )
            if parent not in seen:
                raise BadInput(
                    f"{where}.dependsOn: {parent!r} is not a step of this workflow (its "
                    f"keys: {', '.join(sorted(seen))})",
                    field=f"{where}.dependsOn",
                )
        for j, binding in enumerate(node.bindings):
            if binding.step not in node.depends_on:
                raise BadInput(
                    f"{where}.bind[{j}].step: {binding.step!r} is not in dependsOn of step "
                    f"{node.key!r}; a binding reads the result of a step it depends on",
                    field=f"{where}.bind[{j}].step",
                )
    cycle = find_cycle({n.key: n.depends_on for n in nodes})
    if cycle is not None:
        first = seen[cycle[0]]
        raise BadInput(
            f"{prefix}[{first}].dependsOn: the steps depend on each other in a cycle: "
            f"{' -> '.join(cycle)}",
            field=f"{prefix}[{first}].dependsOn",
        )


def find_cycle(edges: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A cycle of `edges` (key -> keys it depends on), as [a, b, ..., a]; None without one."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    for start in edges:
        if start in state:
            continue
        path: list[str] = [start]
        stack = [iter(edges[start])]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(edges.get(nxt, ())))
    return None


# --- bindings ---------------------------------------------------------------------------------


class BindError(Exception):
    """A binding cannot be applied: the parent's result lacks the path."""


def resolve(result: Any, path: str | None, step: str) -> Any:
    """The value at `path` (dotted: keys of objects, indexes of lists) in `result`."""
    value = result
    if not path:
        return value
    walked: list[str] = []
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif (
            isinstance(value, list)
            and part.lstrip("-").isdigit()
            and -len(value) <= int(part) < len(value)
        ):
            value = value[int(part)]
        else:
            at = ".".join(walked) or "the result"
            has = (
                f"its keys: {', '.join(map(str, value))}"
                if isinstance(value, dict)
                else f"it is a list of {len(value)}"
                if isinstance(value, list)
                else f"it is {type(value).__name__} {value!r}"[:120]
            )
            raise BindError(f"step {step!r}: {at} has no {part!r} ({has})")
        walked.append(part)
    return value


def bind(
    submitted: Mapping[str, Any], bindings: Sequence[Binding], results: Mapping[str, Any]
) -> dict[str, Any]:
    """The step's input: `submitted` with each binding applied in order (a field set, or
    with `append`, the value added at the end of the list the field holds)."""
    out = dict(submitted)
    for b in bindings:
        value = resolve(results.get(b.step), b.path, b.step)
        if b.append:
            current = out.get(b.field)
            if current is None:
                current = []
            if not isinstance(current, list):
                raise BindError(f"{b.field}[]: the input's {b.field!r} is not a list")
            out[b.field] = [*current, value]
        else:
            out[b.field] = value
    return out


# --- the plan (pure) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StepState:
    status: TaskStatus
    waiting: bool  # QUEUED, waiting for its parents
    depends_on: tuple[str, ...] = ()


@dataclass
class Plan:
    ready: list[str] = field(default_factory=list)
    # key -> the error code it is cancelled with (None: cancelWorkflow) and its message
    cancel: dict[str, tuple[TaskErrorCode | None, str]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.ready or self.cancel)


BROKEN = (TaskStatus.FAILED, TaskStatus.CANCELLED)


def plan(states: Mapping[str, StepState], policy: str, cancel_requested: bool) -> Plan:
    """What the steps' states call for now (`states` in the workflow's step order)."""
    queued = [k for k, s in states.items() if s.status is TaskStatus.QUEUED]
    if cancel_requested:
        return Plan(cancel={k: (None, "cancelWorkflow cancelled its workflow") for k in queued})
    broken = [k for k, s in states.items() if s.status in BROKEN]
    if broken and policy == StepFailurePolicy.FAIL_WORKFLOW:
        failed = [k for k in broken if states[k].status is TaskStatus.FAILED]
        cause = (failed or broken)[0]
        message = (
            f"step {cause!r} ended {states[cause].status.value}, and the workflow's "
            "onStepFailure is FAIL_WORKFLOW: the steps that had not started are cancelled"
        )
        return Plan(cancel={k: (TaskErrorCode.WORKFLOW_FAILED, message) for k in queued})
    doomed: dict[str, str] = {}  # a waiting step -> the broken step it cannot run without
    changed = bool(broken)
    while changed:
        changed = False
        for key, s in states.items():
            if key in doomed or not (s.status is TaskStatus.QUEUED and s.waiting):
                continue
            for parent in s.depends_on:
                if states[parent].status in BROKEN:
                    doomed[key] = parent
                elif parent in doomed:
                    doomed[key] = doomed[parent]
                else:
                    continue
                changed = True
                break
    result = Plan()
    for key, cause in doomed.items():
        via = "" if cause in states[key].depends_on else " (through the steps between them)"
        result.cancel[key] = (
            TaskErrorCode.DEPENDENCY_FAILED,
            f"step {cause!r}, which it depends on{via}, ended {states[cause].status.value}",
        )
    result.ready = [
        k
        for k, s in states.items()
        if s.status is TaskStatus.QUEUED
        and s.waiting
        and k not in doomed
        and all(states[p].status is TaskStatus.SUCCEEDED for p in s.depends_on)
    ]
    return result


def outcome(states: Mapping[str, StepState], cancel_requested: bool) -> WorkflowStatus | None:
    """The workflow's end once every step has ended (None before): CANCELLED after
    cancelWorkflow, else FAILED if a step FAILED, else CANCELLED if one was, else
    SUCCEEDED."""
    found = {s.status for s in states.values()}
    if found & {TaskStatus.QUEUED, TaskStatus.RUNNING}:
        return None
    if cancel_requested:
        return WorkflowStatus.CANCELLED
    if TaskStatus.FAILED in found:
        return WorkflowStatus.FAILED
    if TaskStatus.CANCELLED in found:
        return WorkflowStatus.CANCELLED
    return WorkflowStatus.SUCCEEDED


# How a ready step's bound input is checked: check(task type, input as submitted, input as
# bound) -> an InputChecked.
# The processes that know the task types (the api, the worker) set the catalog's
# (check_bound_inputs); until then (or for a type it does not know) the worker that runs
# the step checks it.


@dataclass(frozen=True)
class InputChecked:
    error: str | None = None  # why the input is not valid, naming its fields (None: valid)
    # the task type's default concurrency key and limit for the bound input (None: none),
    # and the default key the submitted one had (the api gave the step that key unless it
    # was given one)
    concurrency: tuple[str, int] | None = None
    submitted_key: str | None = None


InputCheck = Callable[[str, Any, Any], InputChecked]
_check: list[InputCheck] = [lambda task_type, submitted, bound: InputChecked()]


def check_bound_inputs(check: InputCheck) -> InputCheck:
    """Check the bound inputs of the steps this process makes ready with `check`; the check
    it replaces."""
    previous, _check[0] = _check[0], check
    return previous


# --- settling, in the transaction that ended a step -------------------------------------------

MAX_ROUNDS = 8

# The workflows' rows locked, each one's steps read once its lock is held (migration 0011):
# one round trip.
# (with each step's owner and rate, which never change: for its job once ready)
READ = (
    "SELECT s.*, (SELECT t.owner FROM task t WHERE t.id = s.task_id) AS owner, "
    "(SELECT t.rate_limit FROM task t WHERE t.id = s.task_id) AS rate_limit "
    "FROM taskrunner_workflow_steps($1::uuid[]) s"
)
READ_RESULTS = (
    "SELECT s.workflow_id, s.key, t.result FROM workflow_step s JOIN task t ON t.id = s.task_id "
    "WHERE s.workflow_id = ANY($1::uuid[]) AND s.key = ANY($2::text[])"
)
FINISH = """
UPDATE workflow w SET status = f.status, finished_at = clock_timestamp()
FROM unnest($1::uuid[], $2::text[]) AS f(id, status)
WHERE w.id = f.id AND w.status = 'RUNNING' RETURNING w.id"""


def states_of(rows: Sequence[Any]) -> dict[str, StepState]:
    return {
        r["key"]: StepState(
            TaskStatus(r["status"]), r["waiting"] == WAITING_PARENTS, tuple(r["depends_on"])
        )
        for r in rows
    }


async def _read(
    conn: asyncpg.Connection, workflow_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[dict[str, Any]]]:
    """Lock the workflows and read their steps; only the RUNNING ones, by id."""
    found: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for r in await conn.fetch(READ, sorted(set(workflow_ids))):
        if r["w_status"] == WorkflowStatus.RUNNING:
            found.setdefault(r["workflow_id"], []).append(dict(r))
    return found


async def settle(
    conn: asyncpg.Connection,
    noted_on: Mapping[uuid.UUID, uuid.UUID | None],
    after: AfterCommit,
    actor: Actor | None = None,
) -> dict[uuid.UUID, WorkflowStatus]:
    """Settle the workflows of `noted_on` (workflow id -> the step its WorkflowStatusChanged
    goes on, if it ends now: the step that ended in this transaction; None: its last step):
    under their rows' locks, make ready the steps whose parents all SUCCEEDED, cancel what
    a failure (or cancelWorkflow) calls for, and end each workflow whose steps have all
    ended. Returns the workflows that ended. All of a transaction's workflows at once: a
    few statements however many there are. Its changes record `actor` (cancelWorkflow's or
    retryWorkflow's caller), else the workflow's own (a step's end did them)."""
    by = actor or actors.system(actors.System.WORKFLOW)
    steps = await _read(conn, list(noted_on))
    todo = sorted(steps)
    for _ in range(MAX_ROUNDS):
        changes: list[Change] = []
        ready: list[dict[str, Any]] = []
        for w in todo:
            rows = steps[w]
            first = rows[0]
            moves = plan(states_of(rows), first["on_step_failure"], first["cancel_requested"])
            by_key = {r["key"]: r for r in rows}
            changes += [
                transitions.step_cancelled(by_key[k]["task_id"], code, message)
                for k, (code, message) in moves.cancel.items()
            ]
            ready += [by_key[k] for k in moves.ready]
        if not changes and not ready:
            break
        changes += await _readied(conn, ready)
        outcomes, _ = await fastpath.record_on(conn, actors.all_recorded(changes, by))
        after.events.extend(o.event for o in outcomes if o.event is not None)
        rows_of = {r["task_id"]: r for rows in steps.values() for r in rows}
        replan: set[uuid.UUID] = set()
        reread: set[uuid.UUID] = set()
        for o in outcomes:
            row = rows_of[o.change.task_id]
            if not o.accepted:  # it moved meanwhile (a worker started it): read it again
                reread.add(row["workflow_id"])
            elif o.change.kind is EventKind.STEP_READY:
                row["waiting"] = None
                after.jobs.append(  # queued as of its submission: see queue.Job
                    queue.Job(
                        row["type"],
                        row["task_id"],
                        row["priority"],
                        row["queue"],
                        row["concurrency_key"] is not None,
                        int(row["created_at"].timestamp() * 1000),
                        owner=row["owner"],
                        rate_limit=row["rate_limit"],
                    )
                )
            else:  # cancelled (the plan's whole closure), or refused: FAILED, which calls
                row["status"], row["waiting"] = o.change.to, None  # for more
                if o.change.to is TaskStatus.FAILED:
                    replan.add(row["workflow_id"])
        if reread:
            steps.update(await _read(conn, sorted(reread)))
        todo = sorted(replan | reread)
        if not todo:
            break
    else:
        return {}  # moving under it still: the next settling (or the reconciler) ends it
    ends = {
        w: end
        for w, rows in steps.items()
        if (end := outcome(states_of(rows), rows[0]["cancel_requested"])) is not None
    }
    if not ends:
        return {}
    finished = await conn.fetch(FINISH, list(ends), [e.value for e in ends.values()])
    ended = {r["id"]: ends[r["id"]] for r in finished}
    notes = [
        transitions.workflow_changed(noted_on.get(w) or steps[w][-1]["task_id"], w, end.value)
        for w, end in sorted(ended.items())
    ]
    outcomes, _ = await fastpath.record_on(conn, actors.all_recorded(notes, by))
    after.events.extend(o.event for o in outcomes if o.event is not None)
    return ended


async def _readied(conn: asyncpg.Connection, ready: Sequence[dict[str, Any]]) -> list[Change]:
    """The changes making `ready` steps ready: their bindings applied to their submitted
    input (a binding that cannot be applied fails the step: BAD_INPUT, no retry)."""
    binding = [r for r in ready if r["bindings"]]
    results: dict[tuple[uuid.UUID, str], Any] = {}
    if binding:
        workflows = sorted({r["workflow_id"] for r in binding})
        parents = sorted({b["step"] for r in binding for b in r["bindings"]})
        results = {
            (r["workflow_id"], r["key"]): r["result"]
            for r in await conn.fetch(READ_RESULTS, workflows, parents)
        }
    changes = []
    for r in ready:
        bound, concurrency = None, None
        if r["bindings"]:
            bindings = [Binding.from_json(b) for b in r["bindings"]]
            mine = {b.step: results.get((r["workflow_id"], b.step)) for b in bindings}
            try:
                bound = bind(r["input"], bindings, mine)
            except BindError as exc:
                changes.append(
                    transitions.step_refused(
                        r["task_id"],
                        TaskErrorCode.BAD_INPUT,
                        f"bind: {exc}; the step's input cannot be made from its parents' results",
                    )
                )
                continue
            try:
                checked = _check[0](r["type"], r["input"], bound)
            except Exception as exc:  # a validator's own bug: this step's, not its parent's
                checked = InputChecked(
                    f"the input bound from its parents' results could not be checked: "
                    f"{type(exc).__name__}: {exc}"
                )
            if checked.error is not None:
                changes.append(
                    transitions.step_refused(
                        r["task_id"], TaskErrorCode.BAD_INPUT, checked.error, bound_input=bound
                    )
                )
                continue
            if checked.concurrency is not None and r["concurrency_key"] in (
                None,
                checked.submitted_key,
            ):
                # its type's default key, which depends on the input (a webScrape's url,
                # bound from a parent's result, where the submitted one was a placeholder
                # or none): the bound input's
                concurrency = checked.concurrency
                r["concurrency_key"] = concurrency[0]  # (enqueued as a limited task)
        changes.append(
            transitions.step_ready(r["task_id"], r["workflow_id"], r["key"], bound, concurrency)
        )
    return changes
