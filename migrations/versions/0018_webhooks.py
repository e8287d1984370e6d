"""Completion webhooks.

- task.webhook_url: where the task's final status is POSTed (options.webhookUrl, or its
  key's default); task.key_id: the API key that submitted it (a subtask: its parent's; a
  schedule's task: the schedule's), whose webhook secret signs the POST.
- api_key.webhook_url (the key's default) and api_key.webhook_secret (the HMAC key; kept
  as it is, since signing needs the secret itself, not a hash).
- webhook_delivery: the outbox, one row per attempt. The trigger `taskrunner_webhook`
  inserts a delivery's first attempt in the transaction that writes a task's final status
  (its WHEN clause keeps tasks without a webhook out of the function altogether), with the
  body's task part as it was then; workers claim due rows (SKIP LOCKED, a lease), POST,
  record the outcome and insert the next attempt.

Revision ID: 0018_webhooks
Revises: 0017_hooks
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0018_webhooks"
down_revision: str | None = "0017_hooks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ENQUEUE_FUNCTION = """
CREATE FUNCTION taskrunner_webhook() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO webhook_delivery (delivery_id, task_id, attempt, status, url, due_at, task)
  VALUES (
    gen_random_uuid(), NEW.id, 1, 'PENDING', NEW.webhook_url, clock_timestamp(),
    jsonb_build_object(
      'id', NEW.id, 'type', NEW.type, 'status', NEW.status, 'result', NEW.result,
      'error', CASE WHEN NEW.error_code IS NULL THEN NULL
               ELSE jsonb_build_object('code', NEW.error_code,
                                       'message', coalesce(NEW.error_message, '')) END,
      'attempt', NEW.attempts, 'labels', to_jsonb(NEW.labels),
      'createdAt', NEW.created_at, 'finishedAt', NEW.finished_at));
  RETURN NULL;
END $$
"""
ENQUEUE_TRIGGER = """
CREATE TRIGGER taskrunner_webhook AFTER UPDATE OF status ON task FOR EACH ROW
WHEN (NEW.webhook_url IS NOT NULL
      AND NEW.status IN ('SUCCEEDED', 'FAILED', 'CANCELLED')
      AND OLD.status IS DISTINCT FROM NEW.status)
EXECUTE FUNCTION taskrunner_webhook()
"""


def upgrade() -> None:
    op.add_column("task", sa.Column("webhook_url", sa.Text))
    op.add_column("task", sa.Column("key_id", sa.Uuid))
    op.add_column("api_key", sa.Column("webhook_url", sa.Text))
    op.add_column("api_key", sa.Column("webhook_secret", sa.Text))
    op.create_table(
        "webhook_delivery",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("delivery_id", sa.Uuid, nullable=False),
        sa.Column(
            "task_id", sa.Uuid, sa.ForeignKey("task.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("task", JSONB, nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True)),
        sa.Column("lease_token", sa.Uuid),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("duration_ms", sa.Float),
        sa.Column("status_code", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("clock_timestamp()"),
        ),
    )
    op.create_index(
        "ix_webhook_delivery_task", "webhook_delivery", ["task_id", "delivery_id", "attempt"]
    )
    op.create_index(
        "ix_webhook_delivery_due",
        "webhook_delivery",
        ["due_at"],
        postgresql_where=sa.text("status = 'PENDING'"),
    )
    op.execute(ENQUEUE_FUNCTION)
    op.execute(ENQUEUE_TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER taskrunner_webhook ON task")
    op.execute("DROP FUNCTION taskrunner_webhook()")
    op.drop_index("ix_webhook_delivery_due", table_name="webhook_delivery")
    op.drop_index("ix_webhook_delivery_task", table_name="webhook_delivery")
    op.drop_table("webhook_delivery")
    op.drop_column("api_key", "webhook_secret")
    op.drop_column("api_key", "webhook_url")
    op.drop_column("task", "key_id")
    op.drop_column("task", "webhook_url")
