"""The test tree's import rule: a test module imports shared helpers from tests.support,
never from another test module or from a conftest (those are pytest's to load)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.parsing import parse

TESTS = next(p for p in Path(__file__).resolve().parents if p.name == "tests")


def is_test_module(dotted: str) -> bool:
    """`tests.test_x`, `tests.api.test_x`, `tests.conftest` and the like."""
    parts = dotted.split(".")
    return parts[0] == "tests" and (parts[-1] == "conftest" or parts[-1].startswith("test_"))


def imported_modules(source: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, dotted module) for every module that `source`, the text of the file `path`
    under tests/, imports: relative imports resolved, and `from package import name`
    counted as importing `package.name` too (it may be a module)."""
    package = ["tests", *path.parent.relative_to(TESTS).parts]
    for node in ast.walk(parse(source, filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            yield node.lineno, module
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"


def test_no_module_of_the_test_tree_imports_a_test_module_or_a_conftest() -> None:
    offending = [
        f"{path.relative_to(TESTS.parent)}:{line}: imports {module}"
        for path in sorted(TESTS.rglob("*.py"))
        for line, module in imported_modules(path.read_text(), path)
        if is_test_module(module)
    ]
    assert offending == [], "\n".join(offending)


@pytest.mark.parametrize(
    ("source", "module"),
    [
        ("import tests.test_a", "tests.test_a"),
        ("from tests.conftest import Stack", "tests.conftest"),
        ("from tests import conftest", "tests.conftest"),
        ("from tests.api.test_b import X", "tests.api.test_b"),
        ("from ..test_c import Y", "tests.test_c"),
        ("from .. import conftest", "tests.conftest"),
        ("def f():\n    from tests.test_d import Z", "tests.test_d"),
    ],
)
def test_the_rule_sees_every_import_form(source: str, module: str) -> None:
    at = TESTS / "support" / "probe.py"
    assert module in {name for _, name in imported_modules(source, at) if is_test_module(name)}


def test_the_rule_lets_support_and_code_imports_through() -> None:
    source = "from tests.support.tasks import submit\nimport tests.support\nfrom api import app\n"
    at = TESTS / "api" / "test_x.py"
    assert [name for _, name in imported_modules(source, at) if is_test_module(name)] == []


def test_the_parse_of_the_tests_survives_cpythons_spurious_systemerror(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """tests.support.parsing.parse parses again after 3.11's racy SystemError (seen in a
    full run: test_layout failed with it), and lets any other error through."""
    real = ast.parse
    calls: list[str] = []

    def racy(source: str, filename: str = "<unknown>") -> ast.Module:
        calls.append(filename)
        if len(calls) == 1:
            raise SystemError("AST constructor recursion depth mismatch (before=147, after=166)")
        return real(source, filename=filename)

    monkeypatch.setattr(ast, "parse", racy)
    assert isinstance(parse("x = 1", "racy.py"), ast.Module)
    assert calls == ["racy.py", "racy.py"]
    with pytest.raises(SyntaxError):
        parse("x = (", "broken.py")
