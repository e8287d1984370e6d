"""Search inputs stored before `sources` named providers: `sources` listed Brave's verticals
(web, news, videos), which now go in `verticals`, and `sources` names the provider, brave.
A search task (or a schedule's) with such an input would otherwise fail BAD_INPUT when it
runs or is retried. Rewritten: an input of type search with no `verticals` whose `sources`
are all verticals. Anything else is left as it is.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VERTICALS = "('web', 'news', 'videos')"  # Brave's, the only provider before this change
# (table, its input column, its type column)
HOLDERS = [("task", "input", "type"), ("schedule", "task_input", "task_type")]


def upgrade() -> None:
    for table, column, type_column in HOLDERS:
        op.execute(
            f"""
            UPDATE {table}
            SET {column} = {column} || jsonb_build_object(
                'sources', '["brave"]'::jsonb, 'verticals', {column} -> 'sources')
            WHERE {type_column} = 'search'
              AND NOT {column} ? 'verticals'
              AND jsonb_typeof({column} -> 'sources') = 'array'
              AND jsonb_array_length({column} -> 'sources') > 0
              AND NOT EXISTS (
                  SELECT 1 FROM jsonb_array_elements({column} -> 'sources') AS s(v)
                  WHERE jsonb_typeof(s.v) <> 'string' OR s.v #>> '{{}}' NOT IN {VERTICALS})
            """
        )


def downgrade() -> None:
    # back to the old shape where it can be told: sources [brave], and verticals only
    for table, column, type_column in HOLDERS:
        op.execute(
            f"""
            UPDATE {table}
            SET {column} = ({column} - 'verticals')
                || jsonb_build_object('sources', {column} -> 'verticals')
            WHERE {type_column} = 'search'
              AND {column} -> 'sources' = '["brave"]'::jsonb
              AND jsonb_typeof({column} -> 'verticals') = 'array'
            """
        )
