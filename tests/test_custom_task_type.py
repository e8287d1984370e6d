"""The README's "Add your own task type" example, run as a user would: its module in a
package of theirs, TASKRUNNER_TASK_MODULES pointing at it, a real api and worker."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import httpx

from taskrunner.config import Settings
from taskrunner.embedded import free_port
from tests.conftest import Stack, eventually, process_env, repo_root
from tests.test_lifecycle import finish, submit


def readme_example() -> str:
    section = (repo_root() / "README.md").read_text().split("## Add your own task type", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


async def test_the_readme_example_is_registered_everywhere_and_runs(
    settings: Settings, tmp_path: Path
) -> None:
    package = tmp_path / "my_tasks"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "reverse.py").write_text(readme_example())
    extra = {
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(repo_root())]),
        "TASKRUNNER_TASK_MODULES": "my_tasks",
    }
    exported = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "taskrunner", "export-schema", "-o", "-",
        cwd=repo_root(), env=process_env(settings, **extra), stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    schema, _ = await exported.communicate()
    assert exported.returncode == 0
    assert "  reverse: ReverseInput" in schema.decode()
    assert '"""Reverse a text, word by word or letter by letter."""' in schema.decode()

    port = free_port()
    env = process_env(settings, PORT=str(port), **extra)
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "taskrunner", role, cwd=repo_root(), env=env
        )
        for role in ("api", "worker")
    ]
    stack = await Stack.keyed(f"http://127.0.0.1:{port}", settings)
    try:
        async with httpx.AsyncClient() as client:

            async def ready() -> bool:
                """the api answers /readyz"""
                try:
                    return (await client.get(f"{stack.url}/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(ready, 30)
        types = (await stack.execute("{ taskTypes { name description inputSchema } }"))["taskTypes"]
        reverse = next(t for t in types if t["name"] == "reverse")
        assert reverse["inputSchema"]["required"] == ["text"]
        task_id = await submit(stack, {"reverse": {"text": "hello world", "byWord": True}})
        events = await finish(stack, task_id)
    finally:
        for proc in procs:
            proc.terminate()
            await proc.wait()
    assert events[-1]["status"] == "SUCCEEDED"
    assert events[-1]["result"] == {"reversed": "world hello"}
    assert "reversing 11 characters" in [e.get("line") for e in events]


async def _export(env_extra: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "taskrunner", "export-schema", "-o", "-",
        cwd=repo_root(), env={**os.environ, **env_extra},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    return int(proc.returncode or 0), err.decode()


async def test_a_package_that_cannot_be_imported_is_named() -> None:
    code, err = await _export({"TASKRUNNER_TASK_MODULES": "no_such_package_here"})
    assert code == 2
    assert "TASKRUNNER_TASK_MODULES: cannot import 'no_such_package_here'" in err


async def test_two_modules_with_one_name_are_refused() -> None:
    code, err = await _export({"TASKRUNNER_TASK_MODULES": "workers.tasks"})
    assert code == 2
    assert "is defined twice" in err and "rename one NAME" in err
