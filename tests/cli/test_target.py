"""``influence-cli target-identify`` end to end on a tiny recipe (CliRunner), checked against the library."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from influence_cli import load_recipe
from influence_cli.audits.target import target_identify
from influence_cli.cli import app

runner = CliRunner()


@pytest.fixture
def run(tiny_recipe):
    return tiny_recipe("mlp", n_train=12, n_test=8, learning_rates=(0.4, 0.1))


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_target_identify_writes_reports_matching_the_library(run, tmp_path):
    out = tmp_path / "targets"
    res = _invoke("target-identify", run.recipe_path, "--method", "gas", "--top-k", 3, "--test-indices", "0:6",
                  "--threshold", "0.5", "--out", out, "--quiet")
    assert res.exit_code == 0, res.output
    assert {"targets.json", "targets.csv", "summary.md", "suspects.txt", "run.json"} <= {p.name for p in out.iterdir()}
    assert not list(out.glob("*.part"))
    data = json.loads((out / "targets.json").read_text())
    lib = target_identify(load_recipe(run.recipe_path), method="gas", test_indices=range(6), k=3, threshold=0.5)
    assert data == json.loads(json.dumps(lib.to_dict()))
    assert data["method"] == "gas" and len(data["test"]) == 6
    with open(out / "targets.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(int(r["rank"]), int(r["test_index"]), r["flagged"] == "True", int(r["n_suspects"])) for r in rows] == [
        (t["rank"], t["test_index"], t["flagged"], len(t["suspects"])) for t in data["test"]]
    expected = sorted({s["train_index"] for t in data["test"] for s in t["suspects"]})
    assert [int(line) for line in (out / "suspects.txt").read_text().split()] == expected
    summary = (out / "summary.md").read_text().split("\n", 1)[1]  # after the section marker
    assert summary.startswith("# Attack targets (gas)")
    flagged = [t for t in data["test"] if t["flagged"]]
    assert flagged and all(t["suspects"] for t in flagged)  # the low threshold exercises the suspects path
    assert f"{len(flagged)} of 6 candidate" in summary
    for t in flagged:
        assert f"## Test example {t['test_index']}" in summary


@pytest.mark.parametrize("args, message", [
    (["--top-k", "0"], "--top-k: must be at least 1"),
    (["--threshold", "-1"], "--threshold: must be positive"),
    (["--min-share", "1.5"], "--min-share: must be in [0, 1]"),
    (["--share-threshold", "0"], "--share-threshold: must be positive"),
    (["--test-indices", "0,1"], "--test-indices: target-identify compares candidates"),
    (["--test-indices", "0:3,99"], "--test-indices: index 99 is out of range"),
    (["--test-indices", "a"], "--test-indices: cannot read 'a'"),
])
def test_bad_options_give_one_line_and_exit_2(run, tmp_path, args, message):
    res = _invoke("target-identify", run.recipe_path, *args, "--out", tmp_path / "o", "-q")
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], res.output
    assert not (tmp_path / "o" / "targets.json").exists()


def test_unknown_method_is_a_usage_error(run, tmp_path):
    res = _invoke("target-identify", run.recipe_path, "--method", "nope", "--out", tmp_path / "o")
    assert res.exit_code == 2 and "nope" in res.output
