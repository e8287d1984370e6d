"""Aggregates over a time window, for an overview (the console's counts and charts).

- counts: the tasks created since `since`, by their status now;
- buckets: consecutive `bucket_seconds` slices from `since` to now, each with the tasks that
  finished in it by final status, and their queue wait (created, or runAt, to the start of
  the last attempt) and run time (that start to the end) p50 and p95;
- the same percentiles over the whole window;
- failures by error code: the FAILED tasks created since `since`.

Two queries, each one scan of the window's index entries (`ix_task_status_created` for
what was created, `ix_task_finished` for what finished), which INCLUDE every column they
read: the cost follows the window's tasks, not the table's, and visits no table page once
vacuum has marked them all-visible (until then, one per task of the window that changed
since the last vacuum: the newest tasks, on a busy table)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner.errors import BadInput
from taskrunner.models import task_table
from taskrunner.queries import visible_to
from taskrunner.states import TaskStatus

MAX_BUCKETS = 1440  # a day of minutes
MIN_BUCKET_SECONDS = 1
MAX_WINDOW = timedelta(days=31)


@dataclass(frozen=True)
class Percentiles:
    p50: float | None = None
    p95: float | None = None


@dataclass
class Bucket:
    start: datetime
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    queue_wait: Percentiles = Percentiles()
    run_time: Percentiles = Percentiles()


@dataclass
class Stats:
    since: datetime
    bucket_seconds: int
    counts: dict[TaskStatus, int]
    buckets: list[Bucket]
    queue_wait: Percentiles = Percentiles()
    run_time: Percentiles = Percentiles()
    failures_by_code: list[tuple[str, int]] = field(default_factory=list)


def check_window(since: datetime, bucket_seconds: int, now: datetime) -> None:
    """Raises BadInput naming the argument when the window cannot be answered."""
    if bucket_seconds < MIN_BUCKET_SECONDS:
        raise BadInput(
            f"bucketSeconds: {bucket_seconds} is below {MIN_BUCKET_SECONDS}; give 60 for "
            "one bucket a minute",
            field="bucketSeconds",
        )
    if since >= now:
        raise BadInput(
            f"since: {since.isoformat()} is not in the past; give an earlier time, or leave "
            "it out for the last hour",
            field="since",
        )
    if now - since > MAX_WINDOW:
        raise BadInput(
            f"since: {since.isoformat()} is more than {MAX_WINDOW.days} days ago; give a "
            "later time",
            field="since",
        )
    buckets = -(-(now - since).total_seconds() // bucket_seconds)
    if buckets > MAX_BUCKETS:
        raise BadInput(
            f"bucketSeconds: {bucket_seconds} makes {int(buckets)} buckets since "
            f"{since.isoformat()}, more than {MAX_BUCKETS}; give a larger bucketSeconds or a "
            "later since",
            field="bucketSeconds",
        )


def _percentiles(value: list[float | None] | None) -> Percentiles:
    if not value:
        return Percentiles()
    p50, p95 = value
    return Percentiles(
        None if p50 is None else round(float(p50), 4),
        None if p95 is None else round(float(p95), 4),
    )


def window_queries(
    owner: str | None, since: datetime, bucket_seconds: int
) -> tuple[sa.Select[Any], sa.Select[Any]]:
    """The two queries of `stats`: counts by (status, error code) of the tasks created
    since `since`; and per bucket of finished tasks (and over the whole window: `whole`),
    the counts by final status and the queue wait and run time percentiles."""
    t = task_table.c
    visible = visible_to(owner)
    counted = (
        sa.select(t.status, t.error_code, sa.func.count())
        # every status named: one range of ix_task_status_created per status, also where
        # PostgreSQL has no skip scan (before 18)
        .where(visible, t.status.in_([s.value for s in TaskStatus]), t.created_at >= since)
        .group_by(t.status, t.error_code)
    )
    epoch = sa.func.extract("epoch", t.finished_at - sa.literal(since, sa.DateTime(timezone=True)))
    bucket = sa.func.floor(epoch / bucket_seconds).label("bucket")
    wait = sa.func.extract(
        "epoch",
        t.started_at
        - sa.func.greatest(t.created_at, sa.func.coalesce(t.scheduled_for, t.created_at)),
    )
    run = sa.func.extract("epoch", t.finished_at - t.started_at)
    quantiles = sa.literal([0.5, 0.95], sa.ARRAY(sa.Float))

    def of(status: TaskStatus) -> sa.ColumnElement[int]:
        return sa.func.count().filter(t.status == status.value)

    timed = (
        sa.select(
            sa.func.grouping(bucket).label("whole"),
            bucket,
            of(TaskStatus.SUCCEEDED),
            of(TaskStatus.FAILED),
            of(TaskStatus.CANCELLED),
            sa.func.percentile_cont(quantiles).within_group(wait),
            sa.func.percentile_cont(quantiles).within_group(run),
        )
        .where(visible, t.finished_at >= since, t.finished_at.is_not(None))
        .group_by(sa.func.grouping_sets(sa.tuple_(bucket), sa.tuple_()))
    )
    return counted, timed


async def stats(
    *,
    engine: AsyncEngine,
    owner: str | None,
    since: datetime,
    bucket_seconds: int,
    now: datetime,
) -> Stats:
    """The window's aggregates over the tasks `owner` may see (see the module)."""
    check_window(since, bucket_seconds, now)
    counted, timed = window_queries(owner, since, bucket_seconds)
    async with engine.connect() as conn:
        counted_rows = (await conn.execute(counted)).all()
        rows = (await conn.execute(timed)).all()
    counts = dict.fromkeys(TaskStatus, 0)
    failures: dict[str, int] = {}
    for status, code, n in counted_rows:
        counts[TaskStatus(status)] += int(n)
        if status == TaskStatus.FAILED.value:
            code = str(code or "UNKNOWN")
            failures[code] = failures.get(code, 0) + int(n)
    by_code = sorted(failures.items(), key=lambda item: (-item[1], item[0]))
    total = int(-(-(now - since).total_seconds() // bucket_seconds))
    buckets = [Bucket(start=since + timedelta(seconds=i * bucket_seconds)) for i in range(total)]
    result = Stats(
        since=since,
        bucket_seconds=bucket_seconds,
        counts=counts,
        buckets=buckets,
        failures_by_code=by_code,
    )
    for whole, index, succeeded, failed, cancelled, waits, runs in rows:
        if whole:
            result.queue_wait, result.run_time = _percentiles(waits), _percentiles(runs)
            continue
        i = int(index)
        if not 0 <= i < total:  # finished after `now` was read
            continue
        b = buckets[i]
        b.succeeded, b.failed, b.cancelled = int(succeeded), int(failed), int(cancelled)
        b.queue_wait, b.run_time = _percentiles(waits), _percentiles(runs)
    return result
