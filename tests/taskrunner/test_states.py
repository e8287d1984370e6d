"""The state machine, over every pair of states."""

from __future__ import annotations

import itertools

import pytest

from taskrunner.states import (
    ALLOWED,
    CANCEL_QUEUED,
    NARROW,
    RETRY_ONLY,
    TERMINAL,
    TaskStatus,
    accepts_artifacts,
    accepts_events,
    attempt_runs,
    can_move,
)

PAIRS = list(itertools.product(TaskStatus, TaskStatus))


@pytest.mark.parametrize(("current", "target"), PAIRS)
def test_only_listed_moves_are_allowed(current: TaskStatus, target: TaskStatus) -> None:
    assert can_move(current, target) == ((current, target) in ALLOWED)


@pytest.mark.parametrize(("current", "target"), PAIRS)
def test_a_terminal_state_moves_only_by_an_explicit_retry(
    current: TaskStatus, target: TaskStatus
) -> None:
    if current in TERMINAL:
        assert not can_move(current, target)
        assert can_move(current, target, retry_request=True) == ((current, target) in RETRY_ONLY)


def test_retry_requests_only_requeue_failed_or_cancelled() -> None:
    """Not a RUNNING task either: RUNNING -> QUEUED is a worker's move, and a retry of a
    task whose body runs would start a second body beside it."""
    assert {pair for pair in PAIRS if can_move(*pair, retry_request=True)} == {
        (TaskStatus.FAILED, TaskStatus.QUEUED),
        (TaskStatus.CANCELLED, TaskStatus.QUEUED),
    }
    assert not can_move(TaskStatus.SUCCEEDED, TaskStatus.QUEUED, retry_request=True)
    assert not can_move(TaskStatus.RUNNING, TaskStatus.QUEUED, retry_request=True)


@pytest.mark.parametrize("move", sorted(NARROW))
@pytest.mark.parametrize("current", list(TaskStatus))
def test_a_narrow_move_is_taken_only_from_its_source(
    move: tuple[TaskStatus, TaskStatus], current: TaskStatus
) -> None:
    source, target = move
    allowed = can_move(current, target, only_from=source)
    assert allowed == (current is source and (current, target) in ALLOWED)


def test_cancelling_a_queued_task_never_cancels_a_running_one() -> None:
    source, target = CANCEL_QUEUED
    assert can_move(TaskStatus.QUEUED, target, only_from=source)
    assert not can_move(TaskStatus.RUNNING, target, only_from=source)
    assert can_move(TaskStatus.RUNNING, target)  # the worker's, once the body has ended


def test_only_from_names_a_narrow_move() -> None:
    with pytest.raises(ValueError, match="not a move of NARROW"):
        can_move(TaskStatus.RUNNING, TaskStatus.FAILED, only_from=TaskStatus.RUNNING)


@pytest.mark.parametrize("status", list(TaskStatus))
def test_a_write_of_one_attempt_applies_only_while_the_task_runs(status: TaskStatus) -> None:
    assert attempt_runs(status) == (status is TaskStatus.RUNNING)


@pytest.mark.parametrize("status", list(TaskStatus))
def test_progress_and_logs_only_while_running(status: TaskStatus) -> None:
    assert accepts_events(status) == (status is TaskStatus.RUNNING)


@pytest.mark.parametrize("status", list(TaskStatus))
def test_artifacts_until_the_task_ends(status: TaskStatus) -> None:
    assert accepts_artifacts(status) == (status in (TaskStatus.QUEUED, TaskStatus.RUNNING))
