"""Actors: who created a schedule and who changed it last (and when), and who paused or
resumed a queue last (taskrunner.actors). Tasks' events carry theirs in their data.

Revision ID: 0016_actors
Revises: 0015
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0016_actors"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("schedule", sa.Column("created_by", JSONB))
    op.add_column("schedule", sa.Column("changed_by", JSONB))
    op.add_column("schedule", sa.Column("changed_at", sa.DateTime(timezone=True)))
    op.add_column("queue_state", sa.Column("changed_by", JSONB))


def downgrade() -> None:
    op.drop_column("queue_state", "changed_by")
    op.drop_column("schedule", "changed_at")
    op.drop_column("schedule", "changed_by")
    op.drop_column("schedule", "created_by")
