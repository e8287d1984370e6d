"""The task state machine, as a table. Pure: no session, no client.

Invariant: a terminal state (SUCCEEDED, FAILED, CANCELLED) moves only through an
explicit retry request (FAILED | CANCELLED -> QUEUED, a new attempt). Everything
else that tries to move it is rejected, so a late worker, a duplicate delivery or
a cancellation racing a success can never rewrite history.
"""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


TERMINAL: frozenset[TaskStatus] = frozenset(
    {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED}
)
ACTIVE: frozenset[TaskStatus] = frozenset({TaskStatus.QUEUED, TaskStatus.RUNNING})

# (from, to) pairs any actor may take.
ALLOWED: frozenset[tuple[TaskStatus, TaskStatus]] = frozenset(
    {
        (TaskStatus.QUEUED, TaskStatus.RUNNING),  # a worker picks it up
        (TaskStatus.QUEUED, TaskStatus.CANCELLED),  # cancelled before it ran: it never runs
        (TaskStatus.RUNNING, TaskStatus.SUCCEEDED),
        (TaskStatus.RUNNING, TaskStatus.FAILED),  # an error, a timeout, a lost worker
        (TaskStatus.RUNNING, TaskStatus.CANCELLED),
        (TaskStatus.RUNNING, TaskStatus.QUEUED),  # retry, or handed back by a stopping worker
    }
)

# (from, to) pairs only an explicit `retryTask` may take.
RETRY_ONLY: frozenset[tuple[TaskStatus, TaskStatus]] = frozenset(
    {
        (TaskStatus.FAILED, TaskStatus.QUEUED),
        (TaskStatus.CANCELLED, TaskStatus.QUEUED),
    }
)


def can_move(current: TaskStatus, target: TaskStatus, *, retry_request: bool = False) -> bool:
    """Whether `current -> target` is allowed (`retry_request` for an explicit retryTask)."""
    pair = (current, target)
    return pair in ALLOWED or (retry_request and pair in RETRY_ONLY)


def accepts_events(current: TaskStatus) -> bool:
    """Progress and log lines are recorded only while the task runs."""
    return current is TaskStatus.RUNNING


def accepts_artifacts(current: TaskStatus) -> bool:
    """Artifacts are added until the task ends (clients may attach inputs while it waits)."""
    return current in ACTIVE
