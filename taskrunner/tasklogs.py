"""A task's log, read from its events when asked for (`Task.logsUrl`): no file is written
per task. It holds the runner's own lines, one per step of each attempt (queued, attempt N
started on worker W, succeeded in X ms, failed with CODE and its message, retry in S s,
cancelled, retried), the task's own lines (`ctx.log`, its `logging` calls, tracebacks) and
the artifacts it stored, in the order they happened. A task still running has what it has
so far. Read one page of events at a time, so a long log streams in bounded memory."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner.events import EventKind
from taskrunner.models import event_table, task_table

PAGE = 1000  # events read at a time
CONTENT_TYPE = "text/plain; charset=utf-8"


@dataclass
class _Reading:
    """Where the log is in the task's life, as its events tell it."""

    # the worker of each attempt: from the attempt's final event (its metrics), or the
    # task row for the attempt running now (the RUNNING event does not carry it: it is
    # the one every task writes, kept small)
    workers: dict[int, str] = field(default_factory=dict)
    attempt: int = 0  # RUNNING events so far: the attempt running or last run
    running: bool = False


def _line(at: datetime, level: str, text: str) -> str:
    return f"{at.isoformat()} {level.upper():<7} {text}\n"


def _ms(seconds: Any) -> str:
    value = float(seconds) * 1000
    return f"{value:.0f} ms" if value >= 10 else f"{value:.2f} ms"


def _error(data: dict[str, Any]) -> str:
    error = data.get("error") or {}
    return f"{error.get('code', 'UNKNOWN')}: {error.get('message', '')}".rstrip(": ")


def _status_line(reading: _Reading, data: dict[str, Any]) -> tuple[str, str] | None:
    """The runner's line for a status event, (level, text); moves `reading` on."""
    status = data.get("status")
    metrics = data.get("metrics") or {}
    ran, n = reading.running, reading.attempt
    reading.running = status == "RUNNING"
    if status == "RUNNING":
        reading.attempt += 1
        worker = reading.workers.get(reading.attempt)
        where = f" on worker {worker}" if worker else ""
        return "info", f"attempt {reading.attempt} started{where}"
    if status == "SUCCEEDED":
        took = f" in {_ms(metrics['run_seconds'])}" if "run_seconds" in metrics else ""
        return "info", f"attempt {n} succeeded{took}"
    if status == "FAILED":
        what = f"attempt {n} failed" if ran else "failed"
        took = f" after {_ms(metrics['run_seconds'])}" if "run_seconds" in metrics else ""
        return "error", f"{what}{took} with {_error(data)}"
    if status == "CANCELLED":
        return "warning", f"attempt {n} cancelled" if ran else "cancelled before it started"
    if status == "QUEUED":
        if data.get("error"):  # a failed attempt with retries left
            retry = data.get("retry") or {}
            later = (
                f"; retry {retry['retry']} of {retry['of']} in {float(retry['in_seconds']):g} s"
                if retry
                else "; it runs again"
            )
            return "warning", f"attempt {n} failed with {_error(data)}{later}"
        if ran:
            return "info", f"attempt {n} handed back by its stopping worker; it runs again"
        return "info", "queued" if n == 0 else "retried: queued again"
    return None


def render(reading: _Reading, kind: str, at: datetime, data: dict[str, Any]) -> str | None:
    """An event as a line of the log (None: not in the log, e.g. progress)."""
    if kind == EventKind.STATUS.value:
        found = _status_line(reading, data)
        return None if found is None else _line(at, *found)
    if kind == EventKind.LOG.value:
        return _line(at, str(data.get("level") or "info"), str(data.get("line", "")))
    if kind == EventKind.ARTIFACT.value:
        return _line(at, "info", f"stored artifact {data.get('name')} ({data.get('size')} bytes)")
    return None


async def _workers(engine: AsyncEngine, task_id: uuid.UUID) -> dict[int, str]:
    """Which worker ran each attempt (as far as known)."""
    e, t = event_table.c, task_table.c
    metrics = e.data["metrics"]
    ended = sa.select(metrics["attempt"].as_integer(), metrics["worker_id"].as_string()).where(
        e.task_id == task_id, e.kind == EventKind.STATUS.value, e.data.has_key("metrics")
    )
    now = sa.select(t.attempts, t.worker_id).where(t.id == task_id, t.worker_id.is_not(None))
    async with engine.connect() as conn:
        found = {int(n): str(w) for n, w in await conn.execute(ended) if n and w}
        for n, w in await conn.execute(now):
            found.setdefault(int(n), str(w))
    return found


async def task_log(engine: AsyncEngine, task_id: uuid.UUID) -> AsyncIterator[str]:
    """The task's log so far, line by line (see the module)."""
    e = event_table.c
    reading, after = _Reading(await _workers(engine, task_id)), 0
    while True:
        query = (
            sa.select(e.seq, e.kind, e.at, e.data)
            .where(e.task_id == task_id, e.seq > after)
            .order_by(e.seq)
            .limit(PAGE)
        )
        async with engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        for row in rows:
            line = render(reading, row.kind, row.at, row.data)
            if line is not None:
                yield line
        if len(rows) < PAGE:
            return
        after = rows[-1].seq
