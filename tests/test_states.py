"""The state machine, over every pair of states."""

from __future__ import annotations

import itertools

import pytest

from taskrunner.states import (
    ALLOWED,
    RETRY_ONLY,
    TERMINAL,
    TaskStatus,
    accepts_artifacts,
    accepts_events,
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
    assert {pair for pair in PAIRS if can_move(*pair, retry_request=True)} - ALLOWED == {
        (TaskStatus.FAILED, TaskStatus.QUEUED),
        (TaskStatus.CANCELLED, TaskStatus.QUEUED),
    }
    assert not can_move(TaskStatus.SUCCEEDED, TaskStatus.QUEUED, retry_request=True)


@pytest.mark.parametrize("status", list(TaskStatus))
def test_progress_and_logs_only_while_running(status: TaskStatus) -> None:
    assert accepts_events(status) == (status is TaskStatus.RUNNING)


@pytest.mark.parametrize("status", list(TaskStatus))
def test_artifacts_until_the_task_ends(status: TaskStatus) -> None:
    assert accepts_artifacts(status) == (status in (TaskStatus.QUEUED, TaskStatus.RUNNING))
