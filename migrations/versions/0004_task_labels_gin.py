"""GIN index on task.labels (label filters, processed(scope, key))

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_task_labels", "task", ["labels"], postgresql_using="gin")


def downgrade() -> None:
    op.drop_index("ix_task_labels", table_name="task")
