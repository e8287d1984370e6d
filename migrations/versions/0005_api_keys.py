"""api_key: callers' credentials (hash only), owner, admin flag, revocation

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_key",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("owner", sa.String(100), nullable=False),
        sa.Column("admin", sa.Boolean(), nullable=False, server_default="false"),
        sa.Column("prefix", sa.String(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("clock_timestamp()"),
        ),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_api_key_revoked_at", "api_key", ["revoked_at"])


def downgrade() -> None:
    op.drop_table("api_key")
