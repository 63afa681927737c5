"""The package stays readable: no function longer than a reader can hold at once."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "shapley_svc"
LONGEST = 80


def function_lengths() -> list[tuple[int, str]]:
    """(lines from ``def`` to its last line, nested functions and docstring included; where) of every function."""
    lengths = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                lengths.append((length, f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}"))
    return lengths


def test_no_function_in_the_package_reaches_80_lines() -> None:
    lengths = function_lengths()
    assert len(lengths) > 100, "the package was not found"
    too_long = sorted((item for item in lengths if item[0] >= LONGEST), reverse=True)
    assert not too_long, f"split these functions into named steps: {too_long}"
