"""``influence-cli evaluate`` end to end on a tiny recipe (CliRunner): the exactly linear setting of
tests/audits/test_lds.py through a ``--train FILE.py:FUNCTION``, resuming, and one-line errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from audits.test_lds import ETA, _linear_run
from influence_cli.cli import app

runner = CliRunner()

TRAIN_FILE = f'''
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CALLS = HERE / "calls.txt"


def train(indices, seed):
    """One gradient step of size {ETA} from the last checkpoint on the subset (the loss is linear in θ)."""
    with CALLS.open("a") as fh:
        fh.write(f"{{seed}}\\n")
    data = torch.load(HERE / "train.pt")
    x, y = data["inputs"].double()[indices], data["labels"].double()[indices]
    start = torch.load(HERE / "epoch2.pt")
    return {{"weight": start["weight"].double() + {ETA} * y.T @ x, "bias": start["bias"].double() + {ETA} * y.sum(0)}}


def broken(indices, seed):
    return {{}}["weights"]
'''


@pytest.fixture
def run(tmp_path):
    run = _linear_run(tmp_path / "linear")
    (run.dir / "subset_train.py").write_text(TRAIN_FILE)
    return run


def _evaluate(run, *extra: str):
    return runner.invoke(app, ["evaluate", str(run.recipe_path), "--out", str(run.dir / "eval"), *extra])


def _calls(run) -> list[str]:
    path = run.dir / "calls.txt"
    return path.read_text().split() if path.exists() else []


def test_evaluate_writes_the_lds_and_resumes(run):
    res = _evaluate(run, "--train", "subset_train.py:train", "--subsets", "5", "--methods", "tracin",
                    "-m", "loss", "--test-indices", "0:3", "--seed", "2")
    assert res.exit_code == 0, res.output
    assert "LDS: S = 5 subsets (5 retrained)" in res.output and "tracin" in res.output
    assert _calls(run) == ["2"] * 5
    out = run.dir / "eval"
    data = json.loads((out / "lds.json").read_text())
    assert [m["method"] for m in data["methods"]] == ["tracin", "loss"]
    tracin = data["methods"][0]
    assert tracin["lds"] == pytest.approx([1.0, 1.0, 1.0], abs=1e-12) and tracin["skipped"] is None
    assert (data["subsets"], data["fraction"], data["seed"], data["test_indices"]) == (5, 0.5, 2, [0, 1, 2])
    assert data["retrain"]["trained"] == 5 and data["train_function"] == "subset_train.py:train"
    assert "| tracin | 1.000 | 0.000 |" in (out / "lds.md").read_text()
    assert "evaluate" in json.loads((out / "run.json").read_text())["commands"]
    assert len(list((out / "lds-subsets").glob("subset-*.json"))) == 5
    assert not list(out.rglob("*.part"))

    res = _evaluate(run, "--train", "subset_train.py:train", "--subsets", "5", "--methods", "tracin,loss",
                    "--test-indices", "0:3", "--seed", "2", "-q")
    assert (res.exit_code, res.output) == (0, "")
    assert len(_calls(run)) == 5  # nothing retrained
    again = json.loads((out / "lds.json").read_text())
    assert again["retrain"] == {**data["retrain"], "trained": 0, "reused": 5, "seconds": again["retrain"]["seconds"]}
    assert again["methods"][0]["lds"] == tracin["lds"]

    res = _evaluate(run, "--train", "subset_train.py:train", "--subsets", "5", "--methods", "tracin",
                    "--test-indices", "0:3", "--seed", "3", "-q")
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert res.stderr.startswith(f"error: {out / 'lds-subsets'}: holds subsets retrained with other settings "
                                 "(different: seed)")


@pytest.mark.parametrize(("train", "message"), [
    ("nope.py:train", "error: --train: file not found: {dir}/nope.py\n"),
    ("subset_train.py:missing", "error: --train: 'subset_train.py' has no callable named 'missing'\n"),
    ("subset_train.py", "error: --train: expected 'pkg.module:callable' or 'file.py:callable', got 'subset_train.py'\n"),
    ("subset_train.py:broken", "error: train function 'subset_train.py:broken', subset 0: KeyError: 'weights'\n"),
])
def test_a_bad_train_reference_is_one_line(run, train, message):
    res = _evaluate(run, "--train", train, "--subsets", "3", "--methods", "tracin", "-q")
    assert (res.exit_code, res.stdout, res.stderr) == (2, "", message.format(dir=run.dir))
    assert not (run.dir / "eval" / "lds.json").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--fraction", "1"], "error: --fraction: must lie strictly between 0 and 1, got 1.0\n"),
    (["--methods", "tracin,nope"], "error: --methods: unknown choice 'nope' (choose from tracin, gas, gas-l, ekfac, "
                                   "arnoldi, loss, random)\n"),
])
def test_usage_errors_are_one_line(run, args, message):
    res = _evaluate(run, "--train", "subset_train.py:train", *args)
    assert (res.exit_code, res.stderr) == (2, message)
    assert _calls(run) == []


def test_subsets_below_three_are_refused(run):
    res = _evaluate(run, "--train", "subset_train.py:train", "--subsets", "2")
    assert res.exit_code == 2 and "--subsets" in res.stderr and _calls(run) == []
