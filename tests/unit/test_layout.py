"""The import rule: rollout/ and learner/ import only shared/ (and themselves); shared/ imports neither side."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = {"rollout": {"rollout", "shared"}, "learner": {"learner", "shared"}, "shared": {"shared"}}
PROJECT = {"rollout", "learner", "shared", "launch"}


def _imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & PROJECT


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_go_one_way(package):
    bad = {
        str(path.relative_to(ROOT)): sorted(_imported_packages(path) - ALLOWED[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert not {p: b for p, b in bad.items() if b}, "rollout/ and learner/ may import only shared/ (CONTRIBUTING.md)"
