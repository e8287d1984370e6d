"""Who did what: the actor recorded with a change.

A change a client asks for (submit, cancel, retry, pause, a schedule's or a workflow's
change) records the API key that asked: `{"key": <its name>, "owner": <its owner>}`. A
change the service makes on its own records the part that made it: `{"system": <part>}`.
Events carry it in their data (`actor`); schedules and queues keep their last change's.

What a task's own run reports (its start and end, progress, logs, artifacts) records none:
it is the worker's, and `of_event` says so for the moves, without a byte on the hot path
(and a schedule's note of a skipped tick is the schedule's).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from enum import StrEnum
from typing import Any

from taskrunner.changes import Change

Actor = Mapping[str, str]


class System(StrEnum):
    """The parts of the service that change tasks on their own."""

    WORKER = "worker"  # a task's run: its start, its end, a stopping worker handing it back
    RETRY = "retry"  # an attempt failed with retries left: queued again after its backoff
    RECONCILER = "reconciler"  # a lost worker's task, ended or queued again
    SCHEDULE = "schedule"  # a schedule's tick fired a task
    DEADLINE = "deadline"  # a waiting task's deadline passed
    WORKFLOW = "workflow"  # a step's dependents made ready, cancelled or refused
    TASK = "task"  # a running task submitted a subtask (ctx.submit)


def key(name: str, owner: str) -> dict[str, str]:
    """An API key's actor."""
    return {"key": name, "owner": owner}


def system(part: System) -> dict[str, str]:
    return {"system": part.value}


def recorded(change: Change, actor: Actor | None) -> Change:
    """`change` with `actor` in its event's data (unchanged when None)."""
    if actor is None:
        return change
    return replace(change, data={**change.data, "actor": dict(actor)})


def all_recorded(changes: Sequence[Change], actor: Actor | None) -> list[Change]:
    return [recorded(c, actor) for c in changes]


# The moves a worker records without an actor (the task's run): STATUS events to these.
_RUN_MOVES = frozenset({"RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"})


def of_event(kind: str, data: Mapping[str, Any]) -> Actor | None:
    """The actor of a stored event: the one recorded, or the worker's for a status move a
    run made (its start, its end: RUNNING, SUCCEEDED, FAILED, CANCELLED with the run's
    `result`); None for what the task itself reported (progress, logs, artifacts) and for a
    submit, cancel or retry recorded before actors were (events made before then by the
    reconciler or a deadline read as the worker's)."""
    actor = data.get("actor")
    if isinstance(actor, Mapping):
        return actor
    if kind == "status" and data.get("status") in _RUN_MOVES:
        if data["status"] == "CANCELLED" and "result" not in data:
            return None  # a cancel of a QUEUED task recorded before actors were: whose?
        return system(System.WORKER)
    if kind == "schedule":  # a tick skipped while this task is unfinished
        return system(System.SCHEDULE)
    return None
