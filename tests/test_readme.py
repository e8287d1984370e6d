"""The README stays true: the two commands first, every setting in its table."""

from __future__ import annotations

from taskrunner.config import Settings
from tests.conftest import repo_root

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
