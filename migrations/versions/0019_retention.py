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
    op.create_index(
        "ix_workflow_finished",
        "workflow",
        ["finished_at"],
        postgresql_where=sa.text("finished_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_workflow_finished", table_name="workflow")
