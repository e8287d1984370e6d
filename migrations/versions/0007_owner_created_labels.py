"""task (owner, created_at, id) INCLUDE (labels), replacing (owner, created_at): a label
filter in `tasks` is checked in the index, not on each row the walk passes over

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_task_owner_created_labels",
        "task",
        ["owner", "created_at", "id"],
        postgresql_include=["labels"],
    )
    op.drop_index("ix_task_owner_created", table_name="task")


def downgrade() -> None:
    op.create_index("ix_task_owner_created", "task", ["owner", "created_at"])
    op.drop_index("ix_task_owner_created_labels", table_name="task")
