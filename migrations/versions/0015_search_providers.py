"""Search inputs stored before `sources` named providers: `sources` listed Brave's verticals
(web, news, videos), which now go in `verticals`, and `sources` names the provider, brave.
A search task, a schedule's search or a workflow's search step (its input as submitted,
from which a waiting step is bound and `retryWorkflow` restores it) with such an input
would otherwise fail BAD_INPUT when it runs or is retried. Rewritten: an input of type
search with no `verticals` whose `sources` are all verticals, compared as the old code did
(case and spacing aside); the verticals are written cleaned up (lower case, trimmed, each
once, in their order). Anything else is left as it is, including a step whose `sources`
is yet to come from a binding.

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
# (table, its input column, FROM, the condition that its row is a search's)
HOLDERS = [
    ("task", "input", "", "task.type = 'search'"),
    ("schedule", "task_input", "", "schedule.task_type = 'search'"),
    (
        "workflow_step",
        "input",
        "FROM task",
        "task.id = workflow_step.task_id AND task.type = 'search'",
    ),
]


def upgrade() -> None:
    for table, column, source, is_search in HOLDERS:
        c = f"{table}.{column}"
        cleaned = f"""(
            SELECT jsonb_agg(to_jsonb(v) ORDER BY first)
            FROM (SELECT lower(btrim(e #>> '{{}}')) AS v, min(n) AS first
                  FROM jsonb_array_elements({c} -> 'sources') WITH ORDINALITY AS s(e, n)
                  GROUP BY 1) AS d)"""
        op.execute(
            f"""
            UPDATE {table}
            SET {column} = {c} || jsonb_build_object(
                'sources', '["brave"]'::jsonb, 'verticals', {cleaned})
            {source}
            WHERE {is_search}
              AND NOT {c} ? 'verticals'
              AND jsonb_typeof({c} -> 'sources') = 'array'
              AND jsonb_array_length({c} -> 'sources') > 0
              AND NOT EXISTS (
                  SELECT 1 FROM jsonb_array_elements({c} -> 'sources') AS s(v)
                  WHERE jsonb_typeof(s.v) <> 'string'
                     OR lower(btrim(s.v #>> '{{}}')) NOT IN {VERTICALS})
            """
        )


def downgrade() -> None:
    # back to the old shape where it can be told: sources [brave], and verticals only
    for table, column, source, is_search in HOLDERS:
        c = f"{table}.{column}"
        op.execute(
            f"""
            UPDATE {table}
            SET {column} = ({c} - 'verticals') || jsonb_build_object('sources', {c} -> 'verticals')
            {source}
            WHERE {is_search}
              AND {c} -> 'sources' = '["brave"]'::jsonb
              AND jsonb_typeof({c} -> 'verticals') = 'array'
            """
        )
