"""`ast.parse`, again when CPython 3.11 raises its spurious SystemError "AST constructor
recursion depth mismatch": the AST builder's depth counter is shared by the interpreter's
threads, so a thread that parses at the same moment (a traceback being formatted in a
leftover server thread: 3.11's tracebacks parse source for their carets) can unbalance
it (python/cpython#106905 and pytest-dev/pytest#10763). It is a race, so the next parse
succeeds; a real syntax error is raised as such."""

from __future__ import annotations

import ast

ATTEMPTS = 5


def parse(source: str, filename: str = "<unknown>") -> ast.Module:
    for attempt in range(ATTEMPTS):
        try:
            return ast.parse(source, filename=filename)
        except SystemError as exc:
            if "recursion depth mismatch" not in str(exc) or attempt == ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")
