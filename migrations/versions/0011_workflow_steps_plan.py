"""taskrunner_workflow_steps(ids) reads each workflow's steps by its id once its row is
locked, with plans made once per session (0010 planned the whole read again at every
call, to keep a plan cached for any ids from joining every step of every workflow).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RETURNS = """RETURNS TABLE (workflow_id uuid, w_status text, on_step_failure text,
               cancel_requested boolean, key text, task_id uuid, depends_on text[],
               bindings jsonb, input jsonb, status text, waiting text, type text,
               priority int, queue text, concurrency_key text, created_at timestamptz)"""
COLUMNS = """s.key, s.task_id, s.depends_on,
           CASE WHEN t.waiting = 'parents' THEN s.bindings END,
           CASE WHEN t.waiting = 'parents' AND s.bindings <> '[]'::jsonb THEN s.input END,
           t.status::text, t.waiting, t.type::text, t.priority, t.queue, t.concurrency_key,
           t.created_at"""

# Settling (taskrunner.dag.settle) in one round trip: lock the workflows' rows (in id
# order), and read each one's steps once its lock is held. Volatile plpgsql: each read is
# a statement of its own, whose snapshot is taken after that workflow's lock was granted,
# so it sees every step that ended in a transaction which held the lock before (a child's
# last parent, whichever commits last). Each step row carries its workflow's columns.
# Every statement here looks rows up by key whatever the ids: their cached plans serve.
WORKFLOW_STEPS = f"""
CREATE OR REPLACE FUNCTION taskrunner_workflow_steps(ids uuid[])
{RETURNS}
LANGUAGE plpgsql VOLATILE
AS $$
#variable_conflict use_column
DECLARE
  wf record;
BEGIN
  FOR wf IN
    SELECT x.id, x.status, x.on_step_failure, x.cancel_requested
    FROM workflow x WHERE x.id = ANY(ids) ORDER BY x.id FOR UPDATE
  LOOP
    RETURN QUERY
      SELECT wf.id, wf.status, wf.on_step_failure, wf.cancel_requested, {COLUMNS}
      FROM workflow_step s JOIN task t ON t.id = s.task_id
      WHERE s.workflow_id = wf.id
      ORDER BY s.position;
  END LOOP;
END $$;
"""

# 0010's
PREVIOUS = f"""
CREATE OR REPLACE FUNCTION taskrunner_workflow_steps(ids uuid[])
{RETURNS}
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_custom_plan
AS $$
#variable_conflict use_column
BEGIN
  PERFORM 1 FROM workflow w WHERE w.id = ANY(ids) ORDER BY w.id FOR UPDATE;
  RETURN QUERY
    SELECT w.id, w.status, w.on_step_failure, w.cancel_requested, {COLUMNS}
    FROM workflow w
    JOIN workflow_step s ON s.workflow_id = w.id
    JOIN task t ON t.id = s.task_id
    WHERE w.id = ANY(ids)
    ORDER BY w.id, s.position;
END $$;
"""


def upgrade() -> None:
    op.execute(WORKFLOW_STEPS)


def downgrade() -> None:
    op.execute(PREVIOUS)
