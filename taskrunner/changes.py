"""A change to a task as the journal records it (`Change`: an event, perhaps a new status,
the columns to set, the conditions it applies under), its `Outcome`, and how its values
render to SQL (plain values, or `Sql` that PostgreSQL computes, such as `NOW`).

`transitions.py` builds the Changes; `journal.py` and `fastpath.py` record them."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from taskrunner import jsonx
from taskrunner.events import Event, EventKind
from taskrunner.states import TaskStatus


class XidInversion(Exception):
    """This transaction's id is older than the last writer of a task it changes (the
    journal runs it again with a fresh one)."""


NEXT_ATTEMPT: Any = object()
"""A value for `attempts` in Change.values: the locked row's attempts + 1."""


@dataclass(frozen=True)
class Sql:
    """A value for Change.values that PostgreSQL computes in the UPDATE: `text`, where `$`
    stands for `param` (if any), of SQL type `param_type`."""

    text: str
    param: Any = None
    param_type: str = "float8"


NOW = Sql("clock_timestamp()")


def seconds_from_now(seconds: float) -> Sql:
    return Sql("clock_timestamp() + make_interval(secs => $)", float(seconds))


CURRENT_XID = "pg_current_xact_id()::text::bigint"


JSONB_COLUMNS = frozenset({"input", "result"})  # of `task`; so is task_event.data


@dataclass(frozen=True)
class Change:
    """One event to record for a task; with `to`, also a status change."""

    task_id: uuid.UUID
    kind: EventKind
    data: Mapping[str, Any]
    to: TaskStatus | None = None
    retry_request: bool = False
    # With `to`: only from this status (a narrow move of states.NARROW, e.g. CANCEL_QUEUED).
    only_from: TaskStatus | None = None
    values: Mapping[str, Any] = field(default_factory=dict)
    # Only while the row is still this attempt (and, if given, this worker's): a worker
    # that was declared lost must not write over the attempt that replaced it.
    expect_attempt: int | None = None
    expect_worker: str | None = None
    # Also return the task's row as it was found under the lock (Outcome.row): a worker
    # starting an attempt needs it, and reading it here saves a query.
    want_row: bool = False
    # A start of a task with a concurrency key: only with a free slot, else the task is
    # held back (Outcome.held_back; see taskrunner.concurrency).
    take_slot: bool = False
    # The task is known to be a workflow's step (the worker that runs it knows): a group
    # with the end of one records everything in the transaction that settles it, rather
    # than trying the one-statement path first (which would leave that end out).
    step: bool = False
    # A failure the worker may retry (retries.retryable); False: it never retries, whatever
    # maxRetries says. Not recorded: the runner reads it before it records the outcome.
    retryable: bool = True


@dataclass(frozen=True)
class Outcome:
    change: Change
    found: TaskStatus | None  # the status under lock; None: no such task
    event: Event | None  # None: rejected
    row: Mapping[str, Any] | None = None  # with Change.want_row: the task as found
    held_back: bool = False  # a take_slot change without a free slot: the task waits

    @property
    def accepted(self) -> bool:
        return self.event is not None


def json_text(value: Any) -> str | None:
    """A JSONB parameter as `transaction` connections take it (None: SQL NULL)."""
    return None if value is None else jsonx.dumps(value).decode()


def plain_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """The values that are data, not SQL to evaluate (NOW, a time from now ...)."""
    return {k: v for k, v in values.items() if not isinstance(v, Sql)}


def takes_parameter(text: str | None) -> bool:
    """Whether a column set to a plain value (None) or to `Sql` text needs a parameter."""
    return text is None or "$" in text


def assignment(column: str, text: str | None, parameter: str) -> str:
    """`column = ...` for a plain value (None) or `Sql` text, `parameter` standing for the
    value or the Sql's param."""
    return f"{column} = " + (text or "$").replace("$", parameter)


def param(column: str, value: Any) -> Any:
    if isinstance(value, Sql):
        return value.param
    return json_text(value) if column in JSONB_COLUMNS else value


# A step's parents' results by step key and when the last of them finished (`t`: the step's
# task), as jsonb {"results": {...}, "ready_at": ...}: for `ctx.parent_results` and its wait.
PARENTS = """(
  SELECT jsonb_build_object('results', coalesce(jsonb_object_agg(p.key, r.result), '{}'),
                            'ready_at', max(r.finished_at))
  FROM workflow_step c
  JOIN workflow_step p ON p.workflow_id = c.workflow_id AND p.key = ANY(c.depends_on)
  JOIN task r ON r.id = p.task_id
  WHERE c.task_id = t.id AND r.status = 'SUCCEEDED'
)"""
# A task's row as a start finds it (Change.want_row; `t`: the task locked), with the
# PARENTS of a workflow's step (QUEUED: one that starts), read under the lock the start
# takes (a step is ready once they all SUCCEEDED, and they stay so while it runs).
ROW_COLUMNS = f"""t.input, t.timeout_seconds, t.max_retries, t.cancel_requested, t.trace_parent,
t.created_at, t.scheduled_for, t.concurrency_key, clock_timestamp() AS locked_at,
CASE WHEN t.workflow_id IS NOT NULL AND t.status = 'QUEUED' THEN {PARENTS} END AS parents"""


# `workflow_id`: a step that ends is settled in the transaction that ends it (its workflow's
# next steps, taskrunner.workflows); `waiting`: a step waiting for its parents never starts;
# `deadline`: nor does a task past its deadline (LATE: the condition, on the database clock).
LOCKED_COLUMNS = (
    "id, status, event_seq, last_xid, owner, attempts, worker_id, workflow_id, waiting, deadline"
)
LATE = "deadline <= clock_timestamp()"
# The moves of a workflow step its workflow settles, in the transaction that makes them
# (taskrunner.dag.settle): its end, and its return to the queue (a retry, a lost worker's)
# after another step failed under FAIL_WORKFLOW or cancelWorkflow, which cancels it then.
SETTLES = frozenset(
    {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.QUEUED}
)
WAITING_PARENTS = "parents"  # task.waiting of a workflow step whose parents have not all SUCCEEDED
