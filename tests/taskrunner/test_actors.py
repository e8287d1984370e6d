"""Reading an event's actor back (taskrunner.actors.of_event): the one recorded; the
worker's for the moves a run makes without recording one; none for what the task itself
reports, nor for a client's change recorded before actors were (whose it was is unknown)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from taskrunner import actors, transitions
from taskrunner.transitions import TaskErrorCode

WORKER = {"system": "worker"}
ALICE = actors.key("alice", "acme")


@pytest.mark.parametrize(
    ("kind", "data", "actor"),
    [
        ("status", {"status": "QUEUED", "actor": ALICE}, ALICE),
        ("status", {"status": "RUNNING"}, WORKER),
        ("status", {"status": "SUCCEEDED", "result": 1}, WORKER),
        ("status", {"status": "FAILED", "error": {"code": "TASK_ERROR"}}, WORKER),
        ("status", {"status": "CANCELLED", "result": None}, WORKER),  # the run's end
        ("status", {"status": "CANCELLED"}, None),  # a QUEUED task's cancel, before actors
        ("status", {"status": "QUEUED"}, None),  # a submit or retry, before actors
        ("progress", {"progress": 0.5}, None),
        ("log", {"level": "info", "line": "x"}, None),
        ("log", {"level": "info", "line": "cancel requested", "actor": ALICE}, ALICE),
        ("schedule", {"skipped": True}, {"system": "schedule"}),
    ],
)
def test_an_events_actor_is_read_back(kind: str, data: dict[str, Any], actor: Any) -> None:
    assert actors.of_event(kind, data) == actor


def test_the_moves_the_service_makes_on_its_own_record_their_part() -> None:
    lost = transitions.lost(
        uuid.uuid4(), attempt=1, worker_id="w", max_retries=0, cancel_requested=False
    )
    assert actors.of_event("status", lost.data) == {"system": "reconciler"}
    retry = transitions.requeued(uuid.uuid4(), 1, TaskErrorCode.TASK_ERROR, "x", 1.0, max_retries=2)
    assert actors.of_event("status", retry.data) == {"system": "retry"}
    late = transitions.deadline_exceeded(uuid.uuid4())
    assert actors.of_event("status", late.data) == {"system": "deadline"}
    ended = transitions.succeeded(uuid.uuid4(), 1, None)
    assert "actor" not in ended.data  # not a byte more on the hot path
