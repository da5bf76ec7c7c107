"""The import graph is a contract: stages import only downward (the layers in pyproject.toml),
no module imports the package root, and no two modules import each other, even lazily."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("influence_cli", include_external_packages=False)


def test_stages_import_only_downward():
    """import-linter's layers contract from pyproject.toml."""
    res = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports; raise SystemExit("
                          "lint_imports(no_cache=True))"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_no_module_imports_the_package_root(graph):
    """``influence_cli/__init__.py`` is the public facade on top; modules import what they use directly."""
    assert graph.find_modules_that_directly_import("influence_cli") <= {"influence_cli.__main__"}


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), the root package left out."""
    modules = sorted(m for m in graph.modules if m != "influence_cli")
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.find_modules_directly_imported_by(v) - {"influence_cli"}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = stack[stack.index(v):]
            del stack[stack.index(v):]
            if len(component) > 1:
                found.append(sorted(component))

    for m in modules:
        if m not in index:
            visit(m)
    return found


def test_no_import_cycles(graph):
    assert _cycles(graph) == []


def test_the_cli_starts_without_torch():
    """``--help`` and ``--version`` import neither torch, transformers nor matplotlib (start-up time)."""
    code = ("import sys; from influence_cli.cli import app; from typer.testing import CliRunner; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
            "r = CliRunner().invoke(app, ['score', '--help']); assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in ('torch', 'transformers', 'matplotlib') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_a_recipe_error_comes_before_torch_loads():
    """A missing or malformed recipe is reported without paying PyTorch's import (seconds)."""
    code = ("import sys; from influence_cli.cli import app; from typer.testing import CliRunner; "
            "r = CliRunner().invoke(app, ['score', 'no-such-recipe.yaml']); assert r.exit_code == 2, r.output; "
            "print('torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert (res.returncode, res.stdout.strip()) == (0, "False"), res.stderr
