"""Orchestration: named queues, concurrency keys, schedules, paused queues.

- task: `queue` (named queue, 'default'), `concurrency_key` and `concurrency_limit` (at
  most that many of the owner's tasks with the key RUNNING), `waiting` (QUEUED but held
  back from the queue: 'concurrency' while over its limit), `schedule_id` (the schedule
  that fired it; `scheduled_for` is then its tick, unique per schedule).
- schedule: cron or interval schedules that fire tasks.
- queue_state: queues paused by pauseQueue.
- taskrunner_take_slots(ids): the concurrency check of a group of starts, one statement;
  taskrunner_release_slots(owner, key): what a freed slot starts.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The concurrency check of a group of starts, in the statement that starts them
# (taskrunner/fastpath.py) or first in their transaction (journal.record): of the tasks
# `ids` that have a concurrency key, hold back (waiting = 'concurrency') each whose key
# already has as many tasks RUNNING, or granted earlier in this call, as its limit allows;
# returns the ids held back. Keys are locked (transaction advisory locks) in one order, the
# lock's hash, so concurrent calls never deadlock. Volatile plpgsql: each statement below
# takes a new snapshot, so a count made under a key's lock sees every start committed
# before it.
TAKE_SLOTS = """
CREATE OR REPLACE FUNCTION taskrunner_take_slots(ids uuid[]) RETURNS uuid[]
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  r record; n int; granted uuid[] := '{}'; held uuid[] := '{}';
BEGIN
  IF ids IS NULL OR cardinality(ids) = 0 THEN
    RETURN held;
  END IF;
  FOR r IN
    SELECT t.id, t.owner, t.concurrency_key AS k, t.concurrency_limit AS l,
           hashtextextended(t.owner || '/' || t.concurrency_key, 7) AS h
    FROM task t
    WHERE t.id = ANY(ids) AND t.concurrency_key IS NOT NULL AND t.status = 'QUEUED'
    ORDER BY h, t.priority DESC, t.created_at
  LOOP
    PERFORM pg_advisory_xact_lock(r.h);
    SELECT count(*) INTO n FROM task
      WHERE owner = r.owner AND concurrency_key = r.k
        AND (status = 'RUNNING' OR id = ANY(granted));
    IF n < r.l THEN
      granted := granted || r.id;
    ELSE
      UPDATE task SET waiting = 'concurrency' WHERE id = r.id AND status = 'QUEUED';
      held := held || r.id;
    END IF;
  END LOOP;
  RETURN held;
END $$;
"""

# The tasks of the key (owner, key) to release now that a slot may be free: as many of the
# oldest held-back ones (priority first) as there are free slots, no longer held back.
RELEASE_SLOTS = """
CREATE OR REPLACE FUNCTION taskrunner_release_slots(o text, k text)
RETURNS TABLE (id uuid, type text, priority int, queue text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  l int; n int;
BEGIN
  PERFORM pg_advisory_xact_lock(hashtextextended(o || '/' || k, 7));
  SELECT t.concurrency_limit INTO l FROM task t
    WHERE t.owner = o AND t.concurrency_key = k AND t.status = 'QUEUED'
      AND t.waiting = 'concurrency'
    ORDER BY t.priority DESC, t.created_at LIMIT 1;
  IF l IS NULL THEN
    RETURN;
  END IF;
  SELECT count(*) INTO n FROM task t
    WHERE t.owner = o AND t.concurrency_key = k AND t.status = 'RUNNING';
  RETURN QUERY
    UPDATE task SET waiting = NULL
    FROM (SELECT t.id FROM task t
          WHERE t.owner = o AND t.concurrency_key = k AND t.status = 'QUEUED'
            AND t.waiting = 'concurrency'
          ORDER BY t.priority DESC, t.created_at LIMIT greatest(l - n, 0)) AS held
    WHERE task.id = held.id
    RETURNING task.id, task.type::text, task.priority, task.queue;
END $$;
"""


def upgrade() -> None:
    op.add_column(
        "task", sa.Column("queue", sa.Text(), nullable=False, server_default="default")
    )
    op.add_column("task", sa.Column("concurrency_key", sa.Text(), nullable=True))
    op.add_column("task", sa.Column("concurrency_limit", sa.Integer(), nullable=True))
    op.add_column("task", sa.Column("waiting", sa.Text(), nullable=True))
    op.add_column("task", sa.Column("schedule_id", sa.Uuid(), nullable=True))
    op.drop_index("ix_task_ready", table_name="task")
    op.create_index(
        "ix_task_ready",
        "task",
        [sa.text("priority DESC"), "created_at"],
        postgresql_where=sa.text("status = 'QUEUED' AND due_at IS NULL AND waiting IS NULL"),
    )
    op.create_index(
        "ix_task_queue_active",
        "task",
        ["queue", "status", "created_at"],
        postgresql_where=sa.text("status IN ('QUEUED', 'RUNNING')"),
    )
    op.create_index(
        "ix_task_concurrency",
        "task",
        ["owner", "concurrency_key", "status"],
        postgresql_where=sa.text("concurrency_key IS NOT NULL AND status IN ('QUEUED', 'RUNNING')"),
    )
    op.create_index(
        "ux_task_schedule_tick",
        "task",
        ["schedule_id", "scheduled_for"],
        unique=True,
        postgresql_where=sa.text("schedule_id IS NOT NULL"),
    )
    op.create_table(
        "schedule",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("key_id", sa.Uuid(), nullable=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("cron", sa.Text(), nullable=True),
        sa.Column("every_seconds", sa.Float(), nullable=True),
        sa.Column("timezone", sa.Text(), nullable=False, server_default="UTC"),
        sa.Column("task_type", sa.Text(), nullable=False),
        sa.Column("task_input", JSONB(), nullable=False),
        sa.Column("options", JSONB(), nullable=False),
        sa.Column("overlap", sa.Text(), nullable=False, server_default="ALLOW"),
        sa.Column("catchup", sa.Text(), nullable=False, server_default="ONE"),
        sa.Column("paused", sa.Boolean(), nullable=False, server_default="false"),
        sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_task_id", sa.Uuid(), nullable=True),
        sa.Column("skipped", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_skipped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("clock_timestamp()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_schedule_owner_created", "schedule", ["owner", "created_at", "id"])
    op.create_index(
        "ix_schedule_due", "schedule", ["next_run_at"], postgresql_where=sa.text("NOT paused")
    )
    op.create_table(
        "queue_state",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False, server_default="false"),
        sa.Column(
            "changed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("clock_timestamp()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("name"),
    )
    op.execute(TAKE_SLOTS)
    op.execute(RELEASE_SLOTS)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS taskrunner_release_slots(text, text)")
    op.execute("DROP FUNCTION IF EXISTS taskrunner_take_slots(uuid[])")
    op.drop_table("queue_state")
    op.drop_index("ix_schedule_due", table_name="schedule")
    op.drop_index("ix_schedule_owner_created", table_name="schedule")
    op.drop_table("schedule")
    op.drop_index("ux_task_schedule_tick", table_name="task")
    op.drop_index("ix_task_concurrency", table_name="task")
    op.drop_index("ix_task_queue_active", table_name="task")
    op.drop_index("ix_task_ready", table_name="task")
    op.create_index(
        "ix_task_ready",
        "task",
        [sa.text("priority DESC"), "created_at"],
        postgresql_where=sa.text("status = 'QUEUED' AND due_at IS NULL"),
    )
    for column in ("schedule_id", "waiting", "concurrency_limit", "concurrency_key", "queue"):
        op.drop_column("task", column)
