"""Every ```python block of README.md and docs/*.md runs, as a reader would run it: in a fresh process, in a
folder where ``influence-cli demo`` has written ``runs/demo/recipe.yaml`` (here a small demo run: 100
training images, one epoch). A snippet that is not meant to run belongs in a block of another language."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from influence_cli.demo.build import make_digits_run
from influence_cli.demo.training import TrainSchedule

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def python_blocks() -> list[tuple[str, str]]:
    """(``file:line``, code) of every ```python block in :data:`DOCS`."""
    blocks = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for m in BLOCK.finditer(text):
            blocks.append((f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}", m.group(1)))
    return blocks


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    """A folder holding ``runs/demo`` as ``influence-cli demo`` writes it, smaller."""
    folder = tmp_path_factory.mktemp("demo")
    make_digits_run(folder / "runs" / "demo", n_train=100, schedule=TrainSchedule.for_epochs(1))
    return folder


def test_the_python_api_page_has_an_example():
    assert any(where.startswith("docs/python-api.md") for where, _ in python_blocks())


@pytest.mark.parametrize(("where", "code"), python_blocks(), ids=[where for where, _ in python_blocks()])
def test_python_block_runs(where, code, demo_run, tmp_path):
    cwd = tmp_path / "reader"
    shutil.copytree(demo_run, cwd)  # each block starts from the untouched run
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"}  # a check writes no CI summary
    res = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, f"{where} failed:\n{res.stderr[-3000:]}"
