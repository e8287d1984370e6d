"""Workflows: DAGs of tasks.

- workflow: one row per submitted workflow (its status is derived from its steps' and
  changed under this row's lock, by taskrunner.workflows).
- workflow_step: a step's place in its workflow: its key, the keys it depends on, its
  bindings (input fields set from parents' results) and its input as submitted.
- task: `workflow_id` and `step_key` on step tasks; a step that waits for its parents is
  QUEUED with `waiting = 'parents'`.
- taskrunner_workflow_steps(ids): settling's lock of its workflows and read of their steps.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text("clock_timestamp()")

# Settling (taskrunner.dag.settle) in one round trip: lock the workflows' rows (in id order),
# then read their steps. Volatile plpgsql: the read is a statement of its own, so its
# snapshot is taken once the locks are held and sees every step that ended in a
# transaction which held one of them before (a child's last parent, whichever commits
# last). Each step row carries its workflow's columns.
WORKFLOW_STEPS = """
CREATE OR REPLACE FUNCTION taskrunner_workflow_steps(ids uuid[])
RETURNS TABLE (workflow_id uuid, w_status text, on_step_failure text, cancel_requested boolean,
               key text, task_id uuid, depends_on text[], bindings jsonb, input jsonb,
               status text, waiting text, type text, priority int, queue text,
               concurrency_key text, created_at timestamptz)
LANGUAGE plpgsql VOLATILE
-- planned for the ids given each time: a generic plan would join every step of every
-- workflow (a hash join over the whole table) instead of looking the few up
SET plan_cache_mode = force_custom_plan
AS $$
#variable_conflict use_column
BEGIN
  PERFORM 1 FROM workflow w WHERE w.id = ANY(ids) ORDER BY w.id FOR UPDATE;
  RETURN QUERY
    SELECT w.id, w.status, w.on_step_failure, w.cancel_requested, s.key, s.task_id,
           s.depends_on,
           CASE WHEN t.waiting = 'parents' THEN s.bindings END,
           CASE WHEN t.waiting = 'parents' AND s.bindings <> '[]'::jsonb THEN s.input END,
           t.status::text, t.waiting, t.type::text, t.priority, t.queue, t.concurrency_key,
           t.created_at
    FROM workflow w
    JOIN workflow_step s ON s.workflow_id = w.id
    JOIN task t ON t.id = s.task_id
    WHERE w.id = ANY(ids)
    ORDER BY w.id, s.position;
END $$;
"""


def upgrade() -> None:
    op.create_table(
        "workflow",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("key_id", sa.Uuid),
        sa.Column("name", sa.Text),
        sa.Column("status", sa.Text, nullable=False, server_default="RUNNING"),
        sa.Column("on_step_failure", sa.Text, nullable=False, server_default="FAIL_WORKFLOW"),
        sa.Column("labels", ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("idempotency_key", sa.Text),
        sa.Column("step_count", sa.Integer, nullable=False),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default="false"),
        sa.Column("schedule_id", sa.Uuid),
        sa.Column("scheduled_for", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_workflow_owner_created", "workflow", ["owner", "created_at", "id"])
    op.create_index(
        "ix_workflow_running",
        "workflow",
        ["created_at"],
        postgresql_where=sa.text("status = 'RUNNING'"),
    )
    op.create_index(
        "ux_workflow_owner_idempotency",
        "workflow",
        ["owner", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_table(
        "workflow_step",
        sa.Column(
            "task_id", sa.Uuid, sa.ForeignKey("task.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column(
            "workflow_id",
            sa.Uuid,
            sa.ForeignKey("workflow.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("depends_on", ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("bindings", JSONB, nullable=False, server_default="[]"),
        sa.Column("input", JSONB, nullable=False),
        sa.UniqueConstraint("workflow_id", "key", name="ux_workflow_step_key"),
    )
    op.add_column("task", sa.Column("workflow_id", sa.Uuid))
    op.add_column("task", sa.Column("step_key", sa.Text))
    op.create_index(
        "ix_task_workflow",
        "task",
        ["workflow_id"],
        postgresql_where=sa.text("workflow_id IS NOT NULL"),
    )
    op.execute(WORKFLOW_STEPS)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS taskrunner_workflow_steps(uuid[])")
    op.drop_index("ix_task_workflow", table_name="task")
    op.drop_column("task", "step_key")
    op.drop_column("task", "workflow_id")
    op.drop_table("workflow_step")
    op.drop_index("ux_workflow_owner_idempotency", table_name="workflow")
    op.drop_index("ix_workflow_running", table_name="workflow")
    op.drop_index("ix_workflow_owner_created", table_name="workflow")
    op.drop_table("workflow")
