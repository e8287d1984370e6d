"""due_at: tasks wait in PostgreSQL until due (runAt, retry backoff); queue indexes

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("task", sa.Column("due_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_task_due", "task", ["due_at"], postgresql_where=sa.text("due_at IS NOT NULL")
    )
    op.create_index(
        "ix_task_ready",
        "task",
        [sa.text("priority DESC"), "created_at"],
        postgresql_where=sa.text("status = 'QUEUED' AND due_at IS NULL"),
    )
    op.create_index(
        "ix_task_running", "task", ["worker_id"], postgresql_where=sa.text("status = 'RUNNING'")
    )


def downgrade() -> None:
    op.drop_index("ix_task_running", table_name="task")
    op.drop_index("ix_task_ready", table_name="task")
    op.drop_index("ix_task_due", table_name="task")
    op.drop_column("task", "due_at")
