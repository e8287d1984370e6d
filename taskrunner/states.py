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
        (TaskStatus.QUEUED, TaskStatus.FAILED),  # refused before it ran (REFUSE_QUEUED)
        (TaskStatus.RUNNING, TaskStatus.SUCCEEDED),
        (TaskStatus.RUNNING, TaskStatus.FAILED),  # an error, a timeout, a lost worker
        (TaskStatus.RUNNING, TaskStatus.CANCELLED),
        (TaskStatus.RUNNING, TaskStatus.QUEUED),  # retry, or handed back by a stopping worker
    }
)

# (from, to) pairs only an explicit `retryTask` may take, and the only ones it may take: a
# retry of a task that still runs (RUNNING -> QUEUED is a worker's move) would start a
# second body beside the first.
RETRY_ONLY: frozenset[tuple[TaskStatus, TaskStatus]] = frozenset(
    {
        (TaskStatus.FAILED, TaskStatus.QUEUED),
        (TaskStatus.CANCELLED, TaskStatus.QUEUED),
    }
)


# Moves an actor takes only from one state, although the table lets other states reach
# the same target (for other actors): (from, to) as `Change.only_from` and `Change.to`.
# Cancelling a task that has not started is QUEUED -> CANCELLED and nothing else: a cancel
# that read QUEUED must not land on a task a worker started meanwhile, marking it CANCELLED
# while its body runs (that task is cancelled as a running one: its body is stopped, and
# the worker records CANCELLED once the body has ended).
CANCEL_QUEUED: tuple[TaskStatus, TaskStatus] = (TaskStatus.QUEUED, TaskStatus.CANCELLED)
# A task that fails before it starts: a workflow step whose input cannot be bound from its
# parents' results. Only from QUEUED, as a cancel before it started.
REFUSE_QUEUED: tuple[TaskStatus, TaskStatus] = (TaskStatus.QUEUED, TaskStatus.FAILED)
NARROW: frozenset[tuple[TaskStatus, TaskStatus]] = frozenset({CANCEL_QUEUED, REFUSE_QUEUED})


def can_move(
    current: TaskStatus,
    target: TaskStatus,
    *,
    retry_request: bool = False,
    only_from: TaskStatus | None = None,
) -> bool:
    """Whether `current -> target` is allowed (`retry_request` for an explicit retryTask;
    `only_from`: for a move of NARROW, taken only from that state)."""
    pair = (current, target)
    if only_from is not None:
        if (only_from, target) not in NARROW:
            raise ValueError(f"{only_from.value} -> {target.value} is not a move of NARROW")
        if current is not only_from:
            return False
    if retry_request:
        return pair in RETRY_ONLY
    return pair in ALLOWED


def attempt_runs(current: TaskStatus) -> bool:
    """A write on behalf of one attempt (`Change.expect_attempt`: its worker's progress,
    lines, artifacts and outcome, or a recovery of it) applies only while the task runs.
    After a recovery re-queued it the attempt number is still the same, and a late write of
    the old attempt must not land on the waiting task (a CANCELLED, a task.log)."""
    return current is TaskStatus.RUNNING


def accepts_events(current: TaskStatus) -> bool:
    """Progress and log lines are recorded only while the task runs."""
    return current is TaskStatus.RUNNING


def accepts_step_ready(current: TaskStatus) -> bool:
    """A workflow step is made ready (enqueued once its parents SUCCEEDED) only while it
    waits, QUEUED."""
    return current is TaskStatus.QUEUED


def accepts_artifacts(current: TaskStatus) -> bool:
    """Artifacts are added until the task ends (clients may attach inputs while it waits);
    so are a schedule's notes on it (a tick skipped because it is unfinished)."""
    return current in ACTIVE
