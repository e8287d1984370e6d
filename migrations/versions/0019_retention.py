"""Retention: `ix_workflow_finished` finds the finished workflows past TASK_RETENTION_DAYS
(taskrunner.retention) oldest first, without reading the others.

Revision ID: 0019_retention
Revises: 0018_webhooks
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019_retention"
down_revision: str | None = "0018_webhooks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # CONCURRENTLY, outside the migration's transaction: a large workflow table is read
    # whole while it builds, and is not locked against writes meanwhile
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_workflow_finished",
            "workflow",
            ["finished_at"],
            postgresql_where=sa.text("finished_at IS NOT NULL"),
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_workflow_finished", table_name="workflow", postgresql_concurrently=True
        )
