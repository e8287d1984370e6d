"""Hooks: a task module's on_success, on_failure and on_retry due after an attempt's end
(`task.hooks_due`), the lease of the worker that recorded them (`task.hooks_lease`), and
the index the other workers find a dead worker's hooks by (workers.hooks).

Revision ID: 0017_hooks
Revises: 0016_actors
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision: str = "0017_hooks"
down_revision: str | None = "0016_actors"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # nullable, no default: adding them rewrites nothing, however large the table; the
    # index is built CONCURRENTLY, after that commit, so that a large table is not locked
    # while it is read whole (every row has no hook due: the index starts empty)
    op.add_column("task", sa.Column("hooks_due", ARRAY(sa.Text)))
    op.add_column("task", sa.Column("hooks_lease", sa.DateTime(timezone=True)))
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_task_hooks_due",
            "task",
            ["hooks_lease"],
            postgresql_where=sa.text("hooks_due IS NOT NULL"),
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("ix_task_hooks_due", table_name="task", postgresql_concurrently=True)
    op.drop_column("task", "hooks_lease")
    op.drop_column("task", "hooks_due")
