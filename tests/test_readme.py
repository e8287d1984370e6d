"""The README stays true: the two commands first, every setting in its table."""

from __future__ import annotations

from taskrunner.config import Settings
from tests.support.environment import repo_root

README = (repo_root() / "README.md").read_text()


def test_readme_starts_with_the_two_commands() -> None:
    block = README.split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in block.splitlines()[1:] if line.strip()]
    assert commands == ["make dev", "make test"]


def test_every_setting_is_in_the_configuration_table() -> None:
    missing = [n.upper() for n in Settings.model_fields if f"| `{n.upper()}` |" not in README]
    assert missing == []


def test_every_task_type_is_documented() -> None:
    from workers.catalog import catalog

    assert [n for n in catalog() if f"| `{n}` |" not in README] == []


def test_every_limit_of_the_security_section_is_a_setting_reported_by_limits() -> None:
    """The Security section's table lists the limits; each is a setting, and `limits`
    (the Limits type) reports it."""
    import re

    from strawberry.utils.str_converters import to_snake_case

    from api.types.service import Limits

    section = README.split("## Security", 1)[1].split("\n## ", 1)[0]
    table = section.split("| limit | setting |", 1)[1]
    named = {n.lower() for n in re.findall(r"`([A-Z][A-Z0-9_]+)`", table)}
    assert len(named) >= 20
    reported = {to_snake_case(f.name) for f in Limits.__strawberry_definition__.fields}
    assert sorted(named - set(Settings.model_fields)) == []
    assert sorted(named - reported) == []


def test_the_task_error_codes_table_lists_every_code_and_no_other() -> None:
    """The README's "Task error codes" table and `TaskErrorCode` name the same codes."""
    import re

    from taskrunner.transitions import TaskErrorCode

    section = README.split("### Task error codes", 1)[1].split("\n### ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    listed = {code for row in rows for code in re.findall(r"`([A-Z][A-Z_]+)`", row)}
    assert listed == {code.value for code in TaskErrorCode}
