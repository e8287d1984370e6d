"""artifact_upload: uploads granted and not completed (they expire, with their bytes), and
artifact (owner) INCLUDE (size) for the per-owner quota

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "artifact_upload",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("owner", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("content_type", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("max_bytes", sa.BigInteger(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("clock_timestamp()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_artifact_upload_expires", "artifact_upload", ["expires_at"])
    op.create_index("ix_artifact_upload_owner", "artifact_upload", ["owner"])
    op.create_index("ix_artifact_upload_task", "artifact_upload", ["task_id"])
    op.create_index("ix_artifact_owner", "artifact", ["owner"], postgresql_include=["size"])


def downgrade() -> None:
    op.drop_index("ix_artifact_owner", table_name="artifact")
    op.drop_index("ix_artifact_upload_task", table_name="artifact_upload")
    op.drop_index("ix_artifact_upload_owner", table_name="artifact_upload")
    op.drop_index("ix_artifact_upload_expires", table_name="artifact_upload")
    op.drop_table("artifact_upload")
