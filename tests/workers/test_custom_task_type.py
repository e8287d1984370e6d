"""The README's "Add your own task type" example, run as a user would: its module in a
package of theirs, TASKRUNNER_TASK_MODULES pointing at it, a real api and worker."""

from __future__ import annotations

import os
from pathlib import Path

from taskrunner.config import Settings
from tests.support.environment import process_env, repo_root, task_package
from tests.support.processes import api_process, run, worker_process
from tests.support.stack import Stack
from tests.support.tasks import finish, submit


def readme_example() -> str:
    section = (repo_root() / "README.md").read_text().split("## Add your own task type", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


async def test_the_readme_example_is_registered_everywhere_and_runs(
    settings: Settings, tmp_path: Path
) -> None:
    extra = task_package(tmp_path, "my_tasks", {"reverse": readme_example()})
    code, schema, _ = await run("export-schema", "-o", "-", env=process_env(settings, **extra))
    assert code == 0
    assert "  reverse: ReverseInput" in schema
    assert '"""Reverse a text, word by word or letter by letter."""' in schema

    async with (
        worker_process(settings, **extra),  # starting while the api does
        api_process(settings, **extra) as url,
    ):
        stack = await Stack.keyed(url, settings)
        types = (await stack.execute("{ taskTypes { name description inputSchema } }"))["taskTypes"]
        reverse = next(t for t in types if t["name"] == "reverse")
        assert reverse["inputSchema"]["required"] == ["text"]
        task_id = await submit(stack, {"reverse": {"text": "hello world", "byWord": True}})
        events = await finish(stack, task_id)
    assert events[-1]["status"] == "SUCCEEDED"
    assert events[-1]["result"] == {"reversed": "world hello"}
    assert "reversing 11 characters" in [e.get("line") for e in events]


async def _export(env_extra: dict[str, str]) -> tuple[int, str]:
    code, _, err = await run("export-schema", "-o", "-", env={**os.environ, **env_extra})
    return code, err


async def test_a_package_that_cannot_be_imported_is_named() -> None:
    code, err = await _export({"TASKRUNNER_TASK_MODULES": "no_such_package_here"})
    assert code == 2
    assert "TASKRUNNER_TASK_MODULES: cannot import 'no_such_package_here'" in err


async def test_two_modules_with_one_name_are_refused() -> None:
    code, err = await _export({"TASKRUNNER_TASK_MODULES": "workers.tasks"})
    assert code == 2
    assert "is defined twice" in err and "rename one NAME" in err
