"""What each transition writes (taskrunner.transitions): the exact Change of every builder,
the states each may apply from, one shape per transition (the journal's one-statement
path), and the task error codes: one fixed UPPER_SNAKE list, which a body's exception maps
onto (TASK_ERROR, naming the exception's class, unless it carries a code of the list)."""

from __future__ import annotations

import importlib
import pkgutil
import re
import uuid
from dataclasses import replace
from typing import Any

import pytest

import taskrunner
from taskrunner import fastpath, fetch, search, transitions
from taskrunner.artifacts.quotas import ArtifactQuotaExceeded
from taskrunner.artifacts.streams import ArtifactTooLarge
from taskrunner.changes import NEXT_ATTEMPT, Change, Sql
from taskrunner.config import Settings
from taskrunner.errors import (
    BadInput,
    Conflict,
    LimitExceeded,
    TaskrunnerError,
    Unavailable,
)
from taskrunner.events import EventKind
from taskrunner.fetch import FetchRefused
from taskrunner.search import SearchProviderError
from taskrunner.states import TaskStatus
from taskrunner.transitions import TaskErrorCode
from tests.support.servers import run_api, run_worker
from tests.support.stack import Stack
from tests.support.tasks import WATCH, submit
from workers.catalog import catalog
from workers.settings import arq_function

A = uuid.UUID("00000000-0000-0000-0000-00000000000a")
B = uuid.UUID("00000000-0000-0000-0000-00000000000b")
NOW = Sql("clock_timestamp()")
RECONCILER = {"system": "reconciler"}
LOST = {"code": "WORKER_LOST", "message": "the worker running this task stopped responding"}
CLEARED = {
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
}

# (built, expected Change, the statuses it may find its task in)
BUILDERS: dict[str, tuple[Change, Change, str]] = {
    "started": (
        transitions.started(A, "w1"),
        Change(
            A,
            EventKind.STATUS,
            {"status": "RUNNING"},
            to=TaskStatus.RUNNING,
            values={
                "started_at": NOW,
                "attempts": NEXT_ATTEMPT,
                "worker_id": "w1",
                "waiting": None,
            },
            want_row=True,
        ),
        "QUEUED",
    ),
    "succeeded": (
        transitions.succeeded(A, 2, {"n": 1}),
        Change(
            A,
            EventKind.STATUS,
            {"status": "SUCCEEDED", "result": {"n": 1}},
            to=TaskStatus.SUCCEEDED,
            values={
                "finished_at": NOW,
                "result": {"n": 1},
                "progress": 1.0,
                "error_code": None,
                "error_message": None,
            },
            expect_attempt=2,
        ),
        "RUNNING",
    ),
    "failed": (
        transitions.failed(A, 1, TaskErrorCode.TIMEOUT, "exceeded its timeout of 5s"),
        Change(
            A,
            EventKind.STATUS,
            {
                "status": "FAILED",
                "error": {"code": "TIMEOUT", "message": "exceeded its timeout of 5s"},
            },
            to=TaskStatus.FAILED,
            values={
                "finished_at": NOW,
                "error_code": "TIMEOUT",
                "error_message": "exceeded its timeout of 5s",
            },
            expect_attempt=1,
        ),
        "RUNNING",
    ),
    "requeued": (
        transitions.requeued(A, 1, TaskErrorCode.TASK_ERROR, "ValueError: x", 2.5, max_retries=3),
        Change(
            A,
            EventKind.STATUS,
            {
                "status": "QUEUED",
                "error": {"code": "TASK_ERROR", "message": "ValueError: x"},
                "retry": {"retry": 1, "of": 3, "in_seconds": 2.5},
                "actor": {"system": "retry"},
            },
            to=TaskStatus.QUEUED,
            values={
                "due_at": Sql("clock_timestamp() + make_interval(secs => $)", 2.5),
                "worker_id": None,
                "error_code": "TASK_ERROR",
                "error_message": "ValueError: x",
            },
            expect_attempt=1,
        ),
        "RUNNING",
    ),
    "cancelled": (
        transitions.cancelled(A, 3),
        Change(
            A,
            EventKind.STATUS,
            {"status": "CANCELLED", "result": None},
            to=TaskStatus.CANCELLED,
            values={"finished_at": NOW},
            expect_attempt=3,
        ),
        "RUNNING",
    ),
    "handed_back": (
        transitions.handed_back(A, 1),
        Change(
            A,
            EventKind.STATUS,
            {"status": "QUEUED", "actor": {"system": "worker"}},
            to=TaskStatus.QUEUED,
            values={"worker_id": None},
            expect_attempt=1,
        ),
        "RUNNING",
    ),
    "progressed": (
        transitions.progressed(A, 2, 0.5, "half"),
        Change(
            A,
            EventKind.PROGRESS,
            {"progress": 0.5, "message": "half"},
            values={"progress": 0.5, "progress_message": "half"},
            expect_attempt=2,
        ),
        "RUNNING",
    ),
    "log_line": (
        transitions.log_line(A, 1, "error", "Traceback ..."),
        Change(A, EventKind.LOG, {"level": "error", "line": "Traceback ..."}, expect_attempt=1),
        "RUNNING",
    ),
    "lost, cancel requested": (
        transitions.lost(A, attempt=1, worker_id="w1", max_retries=3, cancel_requested=True),
        Change(
            A,
            EventKind.STATUS,
            {"status": "CANCELLED", "actor": RECONCILER},
            to=TaskStatus.CANCELLED,
            values={"finished_at": NOW, "worker_id": None},
            expect_attempt=1,
            expect_worker="w1",
        ),
        "RUNNING",
    ),
    "lost, retries left": (
        transitions.lost(A, attempt=1, worker_id="w1", max_retries=1, cancel_requested=False),
        Change(
            A,
            EventKind.STATUS,
            {"status": "QUEUED", "error": LOST, "actor": RECONCILER},
            to=TaskStatus.QUEUED,
            values={
                "worker_id": None,
                "error_code": "WORKER_LOST",
                "error_message": LOST["message"],
            },
            expect_attempt=1,
            expect_worker="w1",
        ),
        "RUNNING",
    ),
    "lost, no retry left": (
        transitions.lost(A, attempt=2, worker_id="w1", max_retries=1, cancel_requested=False),
        Change(
            A,
            EventKind.STATUS,
            {"status": "FAILED", "error": LOST, "actor": RECONCILER},
            to=TaskStatus.FAILED,
            values={
                "finished_at": NOW,
                "worker_id": None,
                "error_code": "WORKER_LOST",
                "error_message": LOST["message"],
            },
            expect_attempt=2,
            expect_worker="w1",
        ),
        "RUNNING",
    ),
    "cancelled_while_queued": (
        transitions.cancelled_while_queued(A),
        Change(
            A,
            EventKind.STATUS,
            {"status": "CANCELLED"},
            to=TaskStatus.CANCELLED,
            only_from=TaskStatus.QUEUED,
            values={"cancel_requested": True, "finished_at": NOW},
        ),
        "QUEUED",
    ),
    "cancel_requested": (
        transitions.cancel_requested(A, 4),
        Change(
            A,
            EventKind.LOG,
            {"level": "info", "line": "cancel requested"},
            values={"cancel_requested": True},
            expect_attempt=4,
        ),
        "RUNNING",
    ),
    "retried": (
        transitions.retried(A),
        Change(
            A,
            EventKind.STATUS,
            {"status": "QUEUED"},
            to=TaskStatus.QUEUED,
            retry_request=True,
            values=CLEARED,
        ),
        "FAILED,CANCELLED",
    ),
}


@pytest.mark.parametrize("name", BUILDERS)
def test_each_builder_returns_its_exact_change(name: str) -> None:
    built, expected, _ = BUILDERS[name]
    assert built == expected
    assert list(built.values) == list(expected.values)  # the same columns, in order


@pytest.mark.parametrize("name", BUILDERS)
def test_each_transition_applies_only_from_its_states(name: str) -> None:
    built, _, allowed = BUILDERS[name]
    assert fastpath.allowed_from(built) == allowed


def test_codes_are_stored_as_plain_text() -> None:
    """A code goes into JSON and a text column as its value, not as an enum member."""
    change = transitions.failed(A, 1, TaskErrorCode.BAD_RESULT, "m")
    assert type(change.values["error_code"]) is str
    assert type(change.data["error"]["code"]) is str


# Two Changes of one transition, for other tasks and values: one statement records both.
SAME_SHAPE: dict[str, tuple[Change, Change]] = {
    "started": (transitions.started(A, "w1"), transitions.started(B, "w2")),
    "succeeded": (transitions.succeeded(A, 1, None), transitions.succeeded(B, 3, [1, 2])),
    "failed": (
        transitions.failed(A, 1, TaskErrorCode.TIMEOUT, "t"),
        transitions.failed(B, 2, TaskErrorCode.TASK_ERROR, "KeyError: 'k'"),
    ),
    "requeued": (
        transitions.requeued(A, 1, TaskErrorCode.TASK_ERROR, "x", 0.5, max_retries=1),
        transitions.requeued(B, 2, TaskErrorCode.LIMIT_EXCEEDED, "y", 30.0, max_retries=2),
    ),
    "cancelled": (transitions.cancelled(A, 1), transitions.cancelled(B, 2)),
    "handed_back": (transitions.handed_back(A, 1), transitions.handed_back(B, 5)),
    "lost": (
        transitions.lost(A, attempt=1, worker_id="w1", max_retries=0, cancel_requested=False),
        transitions.lost(B, attempt=2, worker_id="w2", max_retries=1, cancel_requested=False),
    ),
    "cancelled_while_queued": (
        transitions.cancelled_while_queued(A),
        transitions.cancelled_while_queued(B),
    ),
    "cancel_requested": (transitions.cancel_requested(A, 1), transitions.cancel_requested(B, 2)),
    "retried": (transitions.retried(A), transitions.retried(B)),
}


@pytest.mark.parametrize("name", SAME_SHAPE)
def test_changes_of_one_transition_share_one_statement(name: str) -> None:
    assert fastpath.one_shape(SAME_SHAPE[name]) is not None


def test_metrics_ride_on_the_final_event_and_change_nothing_else() -> None:
    final = transitions.failed(A, 2, TaskErrorCode.TIMEOUT, "t")
    measured = transitions.with_metrics(
        final,
        attempt=2,
        worker_id="w1",
        queue_wait_seconds=0.123456,
        run_seconds=1.5,
        peak_memory_mb=None,
    )
    assert measured == replace(
        final,
        data={
            **final.data,
            "metrics": {
                "attempt": 2,
                "worker_id": "w1",
                "queue_wait_seconds": 0.1235,
                "run_seconds": 1.5,
                "peak_memory_mb": None,
            },
        },
    )
    assert fastpath.shape_of(measured) == fastpath.shape_of(final)


# --- task error codes ----------------------------------------------------------------------


class _OddCode(TaskrunnerError):
    code = "NOT_A_TASK_ERROR_CODE"


@pytest.mark.parametrize(
    ("exc", "code", "message"),
    [
        (ValueError("no such thing"), "TASK_ERROR", "ValueError: no such thing"),
        (KeyError("k"), "TASK_ERROR", "KeyError: 'k'"),
        (RuntimeError(), "TASK_ERROR", "RuntimeError"),
        (TimeoutError(), "TASK_ERROR", "TimeoutError"),
        (LimitExceeded("over the limit"), "LIMIT_EXCEEDED", "over the limit"),
        (
            ArtifactTooLarge("past TASK_MAX_ARTIFACT_MB"),
            "LIMIT_EXCEEDED",
            "past TASK_MAX_ARTIFACT_MB",
        ),
        (ArtifactQuotaExceeded("past the quota"), "LIMIT_EXCEEDED", "past the quota"),
        (BadInput("name: bad"), "BAD_INPUT", "name: bad"),
        (Conflict("moved on"), "CONFLICT", "moved on"),
        (Unavailable("down", retry_after=2), "UNAVAILABLE", "down"),
        (_OddCode("odd"), "TASK_ERROR", "_OddCode: odd"),
        (FetchRefused("host not allowed"), "FETCH_REFUSED", "host not allowed"),
        (SearchProviderError("HTTP 429"), "SEARCH_PROVIDER_ERROR", "HTTP 429"),
    ],
)
def test_an_exception_maps_to_one_code_of_the_list(
    exc: BaseException, code: str, message: str
) -> None:
    assert transitions.error_of(exc) == (code, message)
    assert isinstance(transitions.error_of(exc)[0], TaskErrorCode)


def test_every_code_is_upper_snake() -> None:
    for code in TaskErrorCode:
        assert code.name == code.value
        assert re.fullmatch(r"[A-Z]+(_[A-Z]+)*", code.value), code


def _subclasses(cls: type[TaskrunnerError]) -> list[type[TaskrunnerError]]:
    return [s for sub in cls.__subclasses__() for s in (sub, *_subclasses(sub))]


def test_every_taskrunner_error_keeps_its_code_on_a_task() -> None:
    """A TaskrunnerError a body raises is recorded with its own code: each one's code is in
    the list (every module of the domain loaded, so that each subclass is seen)."""
    for module in pkgutil.walk_packages(taskrunner.__path__, "taskrunner."):
        if module.name != "taskrunner.__main__":
            importlib.import_module(module.name)
    classes: list[type[TaskrunnerError]] = [TaskrunnerError, *_subclasses(TaskrunnerError)]
    codes = {c.code for c in classes if c is not _OddCode}
    assert {"BAD_INPUT", "LIMIT_EXCEEDED", "UNAVAILABLE"} <= codes
    assert codes <= set(TaskErrorCode), codes - set(TaskErrorCode)


def test_every_task_error_of_the_domain_has_a_code_of_the_list() -> None:
    """The exceptions the domain gives task bodies to raise (fetch, search) name their
    code, and it is in the list: a typo would silently record TASK_ERROR."""
    for module in (fetch, search):
        errors = [
            c
            for c in vars(module).values()
            if isinstance(c, type) and issubclass(c, Exception) and c.__module__ == module.__name__
        ]
        assert errors, module
        for error in errors:
            assert getattr(error, "code", None) in set(TaskErrorCode), error


@pytest.mark.parametrize(
    ("raised", "code", "message"),
    [
        (ValueError("no such thing"), "TASK_ERROR", "ValueError: no such thing"),
        (TimeoutError(), "TASK_ERROR", "TimeoutError"),  # only the runner's timer is TIMEOUT
        (LimitExceeded("over the limit"), "LIMIT_EXCEEDED", "over the limit"),
    ],
)
async def test_a_body_raising_ends_failed_with_the_code_of_its_exception(
    settings: Settings, raised: Exception, code: str, message: str
) -> None:
    async def run(ctx: Any, input: Any) -> Any:
        raise raised

    job = arq_function(replace(catalog()["echo"], run=run))
    async with run_api(settings) as url, run_worker(settings, functions=[job]):
        stack = await Stack.keyed(url, settings)
        task_id = await submit(stack, {"echo": {"message": "x"}})
        events = [e["taskUpdates"] for e in await stack.subscribe(WATCH, id=task_id)]
    assert events[-1]["status"] == "FAILED"
    assert events[-1]["error"] == {"code": code, "message": message}
    tracebacks = [e["line"] for e in events if e.get("level") == "error"]
    assert len(tracebacks) == 1 and type(raised).__name__ in tracebacks[0]
