"""Small rooms: no module of the package over 350 lines and no function over 60, unless it says why at its
top with a `# long: <reason>` comment (a module: in its first 20 lines; a function: in its first 3)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "seq2seq"
MAX_FILE, MAX_FUNCTION = 350, 60


def test_modules_and_functions_are_small_or_say_why():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        name = path.relative_to(PACKAGE.parent)
        if len(lines) > MAX_FILE and not any("# long:" in line for line in lines[:20]):
            too_long.append(f"{name}: {len(lines)} lines")
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                body_start = node.body[0].lineno - 1
                top = lines[node.lineno - 1: body_start + 3]
                if size > MAX_FUNCTION and not any("# long:" in line for line in top):
                    too_long.append(f"{name}:{node.lineno} {node.name}: {size} lines")
    assert not too_long, "over the size limits without a '# long: <reason>':\n" + "\n".join(too_long)


def test_every_package_is_in_the_wheel():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(PACKAGE.parent).parts) for p in PACKAGE.rglob("__init__.py")}
    assert found - listed == set()
