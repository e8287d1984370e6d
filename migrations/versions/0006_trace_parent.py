"""task.trace_parent: the W3C traceparent of the request that submitted it

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("task", sa.Column("trace_parent", sa.String(), nullable=True))


def downgrade() -> None:
    op.drop_column("task", "trace_parent")
