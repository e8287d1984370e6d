"""Execution: deadlines, subtasks, rate limits.

- task.deadline: never start after it (a QUEUED task still waiting then ends FAILED with
  DEADLINE_EXCEEDED); `ix_task_deadline` is the sweep's scan of waiting tasks that have one.
- task.parent_id: the task whose body submitted it (`ctx.submit`), and `detached`: a
  cancel of that parent leaves it running. `ix_task_parent` lists a parent's children.
- task.rate_limit: the rate its starts are held to (its type's RATE_LIMIT, or its
  options.rateLimit), as the queue needs it.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("task", sa.Column("deadline", sa.DateTime(timezone=True)))
    op.add_column("task", sa.Column("parent_id", sa.Uuid))
    op.add_column("task", sa.Column("detached", sa.Boolean, nullable=False, server_default="false"))
    op.add_column("task", sa.Column("rate_limit", sa.Text))
    op.create_index(
        "ix_task_deadline",
        "task",
        ["deadline"],
        postgresql_where=sa.text("deadline IS NOT NULL AND status = 'QUEUED'"),
    )
    op.create_index(
        "ix_task_parent",
        "task",
        ["parent_id", "created_at"],
        postgresql_where=sa.text("parent_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_task_parent", table_name="task")
    op.drop_index("ix_task_deadline", table_name="task")
    for column in ("rate_limit", "detached", "parent_id", "deadline"):
        op.drop_column("task", column)
