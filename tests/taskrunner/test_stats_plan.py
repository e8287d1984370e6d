"""`stats` reads only indexes: both of its queries are index-only scans of the indexes made
for them (`ix_task_status_created`, `ix_task_finished`), for one owner and for an admin. A
column read but missing from an index's INCLUDE turns the scan into one that visits a table
page per task of the window: 5x slower for a day's 30,000 tasks (bench/list.py)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner.stats import window_queries

FILL = """
INSERT INTO task (id, owner, type, status, input, error_code, timeout_seconds, created_at,
                  started_at, finished_at, attempts)
SELECT gen_random_uuid(), 'owner-' || (i % 3), 'echo',
       (ARRAY['SUCCEEDED', 'FAILED', 'QUEUED'])[1 + i % 3],
       '{}'::jsonb, CASE WHEN i % 3 = 1 THEN 'TASK_ERROR' END, 60,
       now() - make_interval(secs => i),
       CASE WHEN i % 3 < 2 THEN now() - make_interval(secs => i) END,
       CASE WHEN i % 3 < 2 THEN now() - make_interval(secs => i) + interval '1 second' END,
       CASE WHEN i % 3 < 2 THEN 1 ELSE 0 END
FROM generate_series(1, 3000) AS i
"""


@pytest.mark.parametrize("owner", ["owner-1", None], ids=["owner", "admin"])
async def test_both_queries_are_index_only_scans(engine: AsyncEngine, owner: str | None) -> None:
    async with engine.begin() as conn:
        await conn.exec_driver_sql(FILL)
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.exec_driver_sql(
            "VACUUM ANALYZE task"
        )  # the visibility map an index-only scan needs
    since = datetime.now(UTC) - timedelta(hours=1)
    plans = []
    async with engine.begin() as conn:
        # a small table is cheaper to read whole: make the planner show the index it would use
        await conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        await conn.exec_driver_sql("SET LOCAL enable_bitmapscan = off")
        for query in window_queries(owner, since, 60):
            sql = query.compile(
                dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}
            )
            rows = await conn.execute(sa.text(f"EXPLAIN (ANALYZE, COSTS OFF) {sql}"))
            plans.append("\n".join(row[0] for row in rows))
    counted, timed = plans
    assert "Index Only Scan using ix_task_status_created on task" in counted, counted
    assert "Index Only Scan using ix_task_finished on task" in timed, timed
    # each reads the window's range of its index, not the whole index (one range per
    # status for the first: no skip scan needed, so PostgreSQL before 18 does the same)
    assert re.search(r"Index Cond: \(\(status = ANY .*created_at >= ", counted), counted
    assert re.search(r"Index Cond: \(finished_at >= ", timed), timed
    for plan in plans:
        assert "Heap Fetches: 0" in plan, plan
