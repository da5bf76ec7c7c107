"""``fingerprint`` and ``git_sha`` on their own (run.json as a whole: test_run_info.py)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import TinyRun
from influence_cli import load_recipe
from influence_cli.reports.run_info import fingerprint, git_sha


def _fingerprint(run: TinyRun, **changes: object) -> dict[str, object]:
    return fingerprint(load_recipe(run.rewrite(**changes) if changes else run.recipe_path))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fingerprint_hashes_each_input_file(tiny_recipe):
    run = tiny_recipe("mlp", n_train=5, n_test=2)
    files = _fingerprint(run)["files"]
    model_code = Path(run.data["model"]["factory"].rpartition(":")[0])
    assert files == {"the training data": _sha256(run.dir / "train.pt"), "the test data": _sha256(run.dir / "test.pt"),
                     "the model code": _sha256(model_code)}


def test_fingerprint_follows_the_data_and_what_the_recipe_computes_not_how_or_where(tiny_recipe):
    run = tiny_recipe("mlp", n_train=5, n_test=2)
    before = _fingerprint(run)
    assert _fingerprint(run, output="elsewhere", cache_dir="grads", batch_size=2, device="cpu", memory_gb=1) == before
    changed = _fingerprint(run, layers=["4"])["recipe"]
    assert [k for k in changed if changed[k] != before["recipe"][k]] == ["layers"]
    run.rewrite(layers=None)
    assert _fingerprint(run) == before  # the same recipe data again: the same hash

    x, y = run.train
    x = x.clone()
    x[0, 0] += 1.0
    torch.save({"inputs": x, "labels": y}, run.dir / "train.pt")
    after = _fingerprint(run)
    assert after["recipe"] == before["recipe"]
    assert after["files"]["the training data"] != before["files"]["the training data"]
    assert {k: v for k, v in after["files"].items() if k != "the training data"} == {
        k: v for k, v in before["files"].items() if k != "the training data"}


def test_a_missing_input_file_fingerprints_as_none(tiny_recipe):
    run = tiny_recipe("mlp", n_train=5, n_test=2)
    (run.dir / "test.pt").unlink()
    assert _fingerprint(run)["files"]["the test data"] is None


def test_git_sha_outside_a_work_tree_is_none(tmp_path):
    if shutil.which("git") and subprocess.run(["git", "-C", str(tmp_path), "rev-parse"],
                                              capture_output=True).returncode == 0:
        pytest.skip("the temporary folder lies inside a git work tree")
    assert git_sha(tmp_path) is None
    assert git_sha(tmp_path / "does-not-exist") is None


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_sha_is_the_commit_checked_out(tmp_path):
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t",
                               "-c", "commit.gpgsign=false", *args], capture_output=True, text=True,
                              check=True).stdout.strip()

    git("init", "-q")
    assert git_sha(tmp_path) is None  # a repository without commits has no HEAD yet
    (tmp_path / "recipe.yaml").write_text("model: {}\n")
    git("add", "recipe.yaml")
    git("commit", "-q", "-m", "first")
    head = git("rev-parse", "HEAD")
    assert len(head) == 40
    assert git_sha(tmp_path) == head
    (tmp_path / "sub").mkdir()
    assert git_sha(tmp_path / "sub") == head  # any folder inside the work tree
