"""What each task transition writes: one builder per transition, returning the
`Change` that records it (its event, the status it moves to, the states or attempt
it applies to, the columns it sets). `journal` records any Change; `states.py` says which
moves are allowed. Schedules and workflows will add their transitions here.

Builders of one transition always return Changes of one shape (the same columns, the same
SQL for computed ones), so concurrent ones are recorded in one statement (the journal's fast
path). The task error codes (`TaskErrorCode`) are defined here too: a failure records one
of them and nothing else.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from enum import StrEnum
from typing import Any

from taskrunner import actors
from taskrunner.changes import NEXT_ATTEMPT, NOW, WAITING_PARENTS, Change, Sql, seconds_from_now
from taskrunner.events import EventKind
from taskrunner.retries import retries_left
from taskrunner.states import CANCEL_QUEUED, REFUSE_QUEUED, TaskStatus


class TaskErrorCode(StrEnum):
    """Why a task failed or was retried (`Task.error.code`, the `error_code` column)."""

    TASK_ERROR = "TASK_ERROR"  # the body raised an exception that carries no code below
    TIMEOUT = "TIMEOUT"  # the attempt ran past its timeoutSeconds (the runner's timer)
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"  # over a limit: memory, artifact size or quota
    BAD_INPUT = "BAD_INPUT"  # the stored input no longer validates, or the body said so
    BAD_RESULT = "BAD_RESULT"  # the body returned a result that is not JSON-serializable
    WORKER_LOST = "WORKER_LOST"  # the worker running the attempt stopped heart-beating
    CRASHED = "CRASHED"  # the child process running a process task died (a signal, an exit)
    # webScrape (taskrunner.fetch) and search (taskrunner.search):
    FETCH_REFUSED = "FETCH_REFUSED"  # the host is not allowlisted, or not a public address
    TOO_MANY_REDIRECTS = "TOO_MANY_REDIRECTS"  # more redirects than allowed, or a loop
    RESPONSE_TOO_LARGE = "RESPONSE_TOO_LARGE"  # the decoded body passed maxBytes
    UNSUPPORTED_ENCODING = "UNSUPPORTED_ENCODING"  # a stacked or unknown Content-Encoding
    SEARCH_NOT_CONFIGURED = "SEARCH_NOT_CONFIGURED"  # BRAVE_API_KEY is not set
    SEARCH_PROVIDER_ERROR = "SEARCH_PROVIDER_ERROR"  # the provider failed or was unreachable
    # The codes of the other TaskrunnerErrors (taskrunner.errors) a body may raise:
    NOT_FOUND = "NOT_FOUND"
    CONFLICT = "CONFLICT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    # workflow steps (taskrunner.workflows):
    DEPENDENCY_FAILED = "DEPENDENCY_FAILED"  # a step it depends on FAILED or was CANCELLED
    WORKFLOW_FAILED = "WORKFLOW_FAILED"  # another step FAILED under FAIL_WORKFLOW
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"  # still QUEUED at its options.deadline: never ran
    RATE_LIMITED = "RATE_LIMITED"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


def error_of(exc: BaseException) -> tuple[TaskErrorCode, str]:
    """The code and message a task records for an exception its body raised: the
    exception's own `code` (a TaskrunnerError's, or a task error's such as
    `taskrunner.fetch.FetchRefused`) when it is one of the list, with its message; any
    other exception's TASK_ERROR, with `"<its class>: <its message>"` (the class alone
    when the message is empty)."""
    name, text = type(exc).__name__, str(exc)
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code in TaskErrorCode.__members__:
        return TaskErrorCode(code), text or name
    return TaskErrorCode.TASK_ERROR, f"{name}: {text}" if text else name


# The parts of the service that make these moves on their own (taskrunner.actors).
BY_WORKER = actors.system(actors.System.WORKER)
BY_RETRY = actors.system(actors.System.RETRY)
BY_RECONCILER = actors.system(actors.System.RECONCILER)
BY_DEADLINE = actors.system(actors.System.DEADLINE)


def _status(to: TaskStatus, **data: Any) -> dict[str, Any]:
    return {"status": to.value, **data}


def _move(
    task_id: uuid.UUID, to: TaskStatus, data: dict[str, Any] | None = None, **change: Any
) -> Change:
    """A status change to `to`: its StatusChanged event (with `data`: result, error) and the
    move; `change`: the rest of the Change (values, conditions)."""
    return Change(task_id, EventKind.STATUS, _status(to, **(data or {})), to=to, **change)


def _error(code: TaskErrorCode, message: str) -> dict[str, str]:
    return {"code": TaskErrorCode(code).value, "message": message}


# --- a worker's attempt: QUEUED -> RUNNING -> its outcome -----------------------------------


def started(task_id: uuid.UUID, worker_id: str, *, limited: bool = False) -> Change:
    """QUEUED -> RUNNING on `worker_id`, as the next attempt; the row as found comes back
    (Outcome.row) for the runner. `limited`: the task has a concurrency key, and starts only
    with a free slot (else it is held back: Outcome.held_back)."""
    return _move(
        task_id,
        TaskStatus.RUNNING,
        values={
            "started_at": NOW,
            "attempts": NEXT_ATTEMPT,
            "worker_id": worker_id,
            "waiting": None,
        },
        want_row=True,
        take_slot=limited,
    )


def succeeded(task_id: uuid.UUID, attempt: int, result: Any) -> Change:
    """RUNNING -> SUCCEEDED with `result` (JSON), progress complete, any earlier error of a
    retried attempt cleared."""
    return _move(
        task_id,
        TaskStatus.SUCCEEDED,
        {"result": result},
        values={
            "finished_at": NOW,
            "result": result,
            "progress": 1.0,
            "error_code": None,
            "error_message": None,
        },
        expect_attempt=attempt,
    )


def failed(task_id: uuid.UUID, attempt: int, code: TaskErrorCode, message: str) -> Change:
    """RUNNING -> FAILED: the attempt ended with an error and no retry is left."""
    error = _error(code, message)
    return _move(
        task_id,
        TaskStatus.FAILED,
        {"error": error},
        values={"finished_at": NOW, "error_code": error["code"], "error_message": message},
        expect_attempt=attempt,
    )


def requeued(
    task_id: uuid.UUID,
    attempt: int,
    code: TaskErrorCode,
    message: str,
    delay_seconds: float,
    *,
    max_retries: int,
) -> Change:
    """RUNNING -> QUEUED after a failure with retries left: waits in PostgreSQL until
    `delay_seconds` from now (the backoff), carrying the error until a later attempt. The
    event says which retry of how many, and when (the task's log reads it)."""
    error = _error(code, message)
    retry = {"retry": attempt, "of": max_retries, "in_seconds": round(delay_seconds, 3)}
    return _move(
        task_id,
        TaskStatus.QUEUED,
        {"error": error, "retry": retry, "actor": BY_RETRY},
        values={
            "due_at": seconds_from_now(delay_seconds),
            "worker_id": None,
            "error_code": error["code"],
            "error_message": message,
        },
        expect_attempt=attempt,
    )


def cancelled(task_id: uuid.UUID, attempt: int) -> Change:
    """RUNNING -> CANCELLED: the attempt's body was cancelled (cancelTask) and has ended."""
    return _move(
        task_id,
        TaskStatus.CANCELLED,
        {"result": None},
        values={"finished_at": NOW},
        expect_attempt=attempt,
    )


def handed_back(task_id: uuid.UUID, attempt: int) -> Change:
    """RUNNING -> QUEUED by a stopping worker, for another worker to run (no error, no
    wait)."""
    return _move(
        task_id,
        TaskStatus.QUEUED,
        {"actor": BY_WORKER},
        values={"worker_id": None},
        expect_attempt=attempt,
    )


def progressed(task_id: uuid.UUID, attempt: int, fraction: float, message: str | None) -> Change:
    """The attempt's progress (no move): `fraction` in [0, 1] and an optional message, on
    the row and as an event, while the attempt runs."""
    return Change(
        task_id,
        EventKind.PROGRESS,
        {"progress": fraction, "message": message},
        values={"progress": fraction, "progress_message": message},
        expect_attempt=attempt,
    )


def log_line(task_id: uuid.UUID, attempt: int, level: str, line: str) -> Change:
    """A line in the attempt's log (no move), while the attempt runs."""
    return Change(task_id, EventKind.LOG, {"level": level, "line": line}, expect_attempt=attempt)


def with_metrics(
    final: Change,
    *,
    attempt: int,
    worker_id: str,
    queue_wait_seconds: float,
    run_seconds: float,
    peak_memory_mb: float | None,
) -> Change:
    """`final` (an attempt's outcome) with the attempt's figures on its event, where
    `Task.metrics` reads them."""
    figures = {
        "attempt": attempt,
        "worker_id": worker_id,
        "queue_wait_seconds": round(queue_wait_seconds, 4),
        "run_seconds": round(run_seconds, 4),
        "peak_memory_mb": peak_memory_mb,
    }
    return replace(final, data={**final.data, "metrics": figures})


def with_hook(change: Change, hook: str, attempt: int, lease_seconds: float) -> Change:
    """`change` (an attempt's end) that also records the task module's `hook` as due
    (`task.hooks_due`, e.g. `on_retry:2`), leased for `lease_seconds` to whoever runs it
    once committed (0: to any worker's sweep at once; workers.hooks)."""
    due = Sql("array_append(hooks_due, $)", f"{hook}:{attempt}", "text")
    lease = seconds_from_now(lease_seconds)
    return replace(change, values={**change.values, "hooks_due": due, "hooks_lease": lease})


def hook_of(change: Change) -> str | None:
    """The hook an attempt's end calls for: on_success for SUCCEEDED, on_failure for FAILED,
    on_retry for a failure queued again (with its error)."""
    if change.to is TaskStatus.SUCCEEDED:
        return "on_success"
    if change.to is TaskStatus.FAILED:
        return "on_failure"
    if change.to is TaskStatus.QUEUED and "error" in change.data:
        return "on_retry"
    return None


# --- the reconciler: an attempt whose worker stopped responding -----------------------------


def lost(
    task_id: uuid.UUID,
    *,
    attempt: int,
    worker_id: str | None,
    max_retries: int,
    cancel_requested: bool,
) -> Change:
    """The end of `attempt`, run by `worker_id`, which stopped heart-beating: CANCELLED if a
    cancel was requested, else QUEUED again if retries are left, else FAILED; the last two
    with WORKER_LOST. Only while the task is still that attempt of that worker."""
    if cancel_requested:
        return _move(
            task_id,
            TaskStatus.CANCELLED,
            {"actor": BY_RECONCILER},
            values={"finished_at": NOW, "worker_id": None},
            expect_attempt=attempt,
            expect_worker=worker_id,
        )
    error = _error(TaskErrorCode.WORKER_LOST, "the worker running this task stopped responding")
    if retries_left(max_retries, attempt):
        return _move(
            task_id,
            TaskStatus.QUEUED,
            {"error": error, "actor": BY_RECONCILER},
            values={
                "worker_id": None,
                "error_code": error["code"],
                "error_message": error["message"],
            },
            expect_attempt=attempt,
            expect_worker=worker_id,
        )
    return _move(
        task_id,
        TaskStatus.FAILED,
        {"error": error, "actor": BY_RECONCILER},
        values={
            "finished_at": NOW,
            "worker_id": None,
            "error_code": error["code"],
            "error_message": error["message"],
        },
        expect_attempt=attempt,
        expect_worker=worker_id,
    )


# --- schedules ----------------------------------------------------------------------------


def tick_skipped(task_id: uuid.UUID, schedule_id: uuid.UUID, scheduled_for: str) -> Change:
    """A schedule with `overlap: SKIP` skipped its tick `scheduled_for` (ISO time) because
    this task, its last run, is unfinished (no move; only while it is QUEUED or RUNNING)."""
    return Change(
        task_id,
        EventKind.SCHEDULE,
        {"skipped": True, "schedule_id": str(schedule_id), "scheduled_for": scheduled_for},
    )


# --- workflows (taskrunner.workflows): a step's moves decided by its workflow ----------------


def step_ready(
    task_id: uuid.UUID,
    workflow_id: uuid.UUID,
    step_key: str,
    bound_input: Any | None,
    concurrency: tuple[str, int] | None = None,
) -> Change:
    """A waiting step whose parents all SUCCEEDED is ready (no move: it stays QUEUED, out
    of `waiting`, and is enqueued once committed); `bound_input`: its input with the
    bindings from its parents' results applied (None: it has no bindings); `concurrency`:
    the concurrency key and limit its type gives that input (None: it keeps its own)."""
    values: dict[str, Any] = {"waiting": None}
    if bound_input is not None:
        values["input"] = bound_input
    if concurrency is not None:
        values["concurrency_key"], values["concurrency_limit"] = concurrency
    return Change(
        task_id,
        EventKind.STEP_READY,
        {"workflow_id": str(workflow_id), "step_key": step_key},
        values=values,
    )


def step_refused(
    task_id: uuid.UUID, code: TaskErrorCode, message: str, bound_input: Any | None = None
) -> Change:
    """QUEUED -> FAILED without running (only from QUEUED): a step whose input cannot be
    bound from its parents' results, or is not valid once bound (`bound_input`: kept as
    its input, to see why). No retry: the results will not change."""
    error = _error(code, message)
    source, target = REFUSE_QUEUED
    values: dict[str, Any] = {
        "finished_at": NOW,
        "waiting": None,
        "error_code": error["code"],
        "error_message": message,
    }
    if bound_input is not None:
        values["input"] = bound_input
    return _move(task_id, target, {"error": error}, only_from=source, values=values)


def deadline_exceeded(task_id: uuid.UUID) -> Change:
    """QUEUED -> FAILED without running (only from QUEUED): its options.deadline passed
    while it waited (in the queue, for runAt, a slot, a rate limit, a retry's backoff). No
    retry: it must not start any more."""
    source, target = REFUSE_QUEUED
    message = "its deadline passed before it could start"
    error = _error(TaskErrorCode.DEADLINE_EXCEEDED, message)
    values: dict[str, Any] = {
        "finished_at": NOW,
        "waiting": None,
        "due_at": None,
        "error_code": error["code"],
        "error_message": message,
    }
    data = {"error": error, "actor": BY_DEADLINE}
    return _move(task_id, target, data, only_from=source, values=values)


def step_cancelled(task_id: uuid.UUID, code: TaskErrorCode | None, message: str) -> Change:
    """QUEUED -> CANCELLED (only from QUEUED) by its workflow: a step it depends on failed,
    another step failed (FAIL_WORKFLOW), or cancelWorkflow (no code)."""
    source, target = CANCEL_QUEUED
    data: dict[str, Any] = {}
    values: dict[str, Any] = {
        "finished_at": NOW,
        "waiting": None,
        "due_at": None,  # a step waiting for a retry is not due any more
        "cancel_requested": True,
    }
    if code is not None:
        data["error"] = _error(code, message)
        values.update(error_code=code.value, error_message=message)
    return _move(task_id, target, data, only_from=source, values=values)


def step_retried(task_id: uuid.UUID, submitted_input: Any, *, waits: bool) -> Change:
    """FAILED | CANCELLED -> QUEUED (retryWorkflow), as `retried`, with the input as it
    was submitted (its bindings are applied again when it is ready); `waits`: a parent has
    not SUCCEEDED, so it waits for it (out of the queue)."""
    change = retried(task_id)
    return replace(
        change,
        values={
            **change.values,
            "input": submitted_input,
            "waiting": WAITING_PARENTS if waits else None,
        },
    )


def workflow_changed(task_id: uuid.UUID, workflow_id: uuid.UUID, status: str) -> Change:
    """The workflow's status changed (no move), noted on the step whose change did it."""
    return Change(task_id, EventKind.WORKFLOW, {"workflow_id": str(workflow_id), "status": status})


# --- the api: cancelTask and retryTask ------------------------------------------------------


def cancelled_while_queued(task_id: uuid.UUID) -> Change:
    """QUEUED -> CANCELLED (cancelTask before it started): it never runs. Only from QUEUED
    (states.CANCEL_QUEUED): a task a worker started meanwhile is cancelled as a running one."""
    source, target = CANCEL_QUEUED
    return _move(
        task_id,
        target,
        only_from=source,
        values={"cancel_requested": True, "finished_at": NOW},
    )


def cancel_requested(task_id: uuid.UUID, attempt: int) -> Change:
    """cancelTask on a running `attempt`: flag it (no move; its worker stops the body, which
    then ends `cancelled`). Only while the task is still that attempt: the cancel message
    names it."""
    return Change(
        task_id,
        EventKind.LOG,
        {"level": "info", "line": "cancel requested"},
        values={"cancel_requested": True},
        expect_attempt=attempt,
    )


def retried(task_id: uuid.UUID) -> Change:
    """FAILED | CANCELLED -> QUEUED (retryTask), as a new attempt: the last attempt's
    outcome is cleared from the row (its events stay)."""
    return _move(
        task_id,
        TaskStatus.QUEUED,
        retry_request=True,
        values={
            "due_at": None,
            "finished_at": None,
            "cancel_requested": False,
            "error_code": None,
            "error_message": None,
            "result": None,
            "progress": None,
            "progress_message": None,
            "worker_id": None,
            "waiting": None,
        },
    )
