"""Layering: launch/ and parallel/ are below the trainer. They import from pretrain/ only the shared error
type and argument parser; what they need of the trainer is handed in (launch.program.TrainingProgram)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ALLOWED = {"pretrain.errors", "pretrain.arg_parser"}


def pretrain_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "pretrain" else [f"pretrain.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n == "pretrain" or n.startswith("pretrain.")}
    return found


@pytest.mark.parametrize("package", ["launch", "parallel"])
def test_lower_layers_import_only_the_error_type_and_argument_parser_of_the_trainer(package):
    wrong = {str(p.relative_to(REPO)): sorted(pretrain_imports(p) - ALLOWED)
             for p in sorted((REPO / package).rglob("*.py"))}
    assert {k: v for k, v in wrong.items() if v} == {}
