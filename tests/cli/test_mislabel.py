"""``influence-cli mislabel-detect`` end to end on a tiny recipe (CliRunner), checked against the library."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from influence_cli import load_recipe
from influence_cli.audits.mislabel import mislabel_detect
from influence_cli.cli import app

runner = CliRunner()


@pytest.fixture
def run(tiny_recipe):
    return tiny_recipe("mlp", n_train=12, learning_rates=(0.4, 0.1), formats=["plain", "training"])


def _invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def test_writes_reports_matching_the_library(run, tmp_path):
    out = tmp_path / "report"
    res = _invoke("mislabel-detect", run.recipe_path, "--method", "tracin-last", "--top", 4, "--out", out, "--quiet")
    assert res.exit_code == 0, res.output
    assert res.output == ""
    assert {p.name for p in out.iterdir()} == {"mislabels.json", "mislabels.csv", "summary.md", "run.json"}
    data = json.loads((out / "mislabels.json").read_text())
    lib = mislabel_detect(load_recipe(run.recipe_path), method="tracin-last", top=4).to_dict()
    assert {"method", "recipe", "ranking"} <= set(data)
    assert data["method"] == "tracin-last" and data["n_flagged"] == 4 and data["flag_rule"]["rule"] == "top"
    assert data["ranking"] == lib["ranking"]
    with open(out / "mislabels.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["rank", "train_index", "score", "given_label", "suggested_label", "suggested_prob",
                             "flagged"]
    assert [int(r["train_index"]) for r in rows] == [e["train_index"] for e in data["ranking"]]
    assert [float(r["score"]) for r in rows] == pytest.approx([e["score"] for e in data["ranking"]], rel=1e-12)
    assert [r["flagged"] for r in rows] == ["True"] * 4 + ["False"] * 8
    summary = (out / "summary.md").read_text().split("\n", 1)[1]  # after the section marker
    assert summary.startswith("# Suspected mislabels (tracin-last)") and "4 of 12 training examples flagged" in summary


def test_default_method_auto_cut_and_table(run):
    res = _invoke("mislabel-detect", run.recipe_path)
    assert res.exit_code == 0, res.output
    assert "Suspected mislabels (combined)" in res.output
    data = json.loads((run.dir / "out" / "mislabels.json").read_text())  # the recipe's `output`
    assert data["method"] == "combined" and data["flag_rule"]["rule"] == "auto"
    assert data["n_flagged"] == sum(e["flagged"] for e in data["ranking"])


def test_fraction(run, tmp_path):
    res = _invoke("mislabel-detect", run.recipe_path, "--fraction", 0.25, "--out", tmp_path, "-q")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "mislabels.json").read_text())["n_flagged"] == 3


@pytest.mark.parametrize("args, message", [
    (("--top", "0"), "--top: must be between 1 and the 12 training examples, got 0"),
    (("--top", "13"), "--top: must be between 1 and the 12 training examples, got 13"),
    (("--fraction", "0"), "--fraction: must be in (0, 1], got 0.0"),
    (("--fraction", "2"), "--fraction: must be in (0, 1], got 2.0"),
    (("--top", "3", "--fraction", "0.5"), "--top: give --top or --fraction, not both"),
])
def test_bad_flag_values_are_one_line_errors(run, args, message):
    res = _invoke("mislabel-detect", run.recipe_path, *args, "-q")
    assert res.exit_code == 2
    assert message in res.output and len(res.output.strip().splitlines()) == 1


def test_bad_method_and_recipe(run, tmp_path):
    assert _invoke("mislabel-detect", run.recipe_path, "--method", "bogus").exit_code == 2
    res = _invoke("mislabel-detect", tmp_path / "missing.yaml")
    assert res.exit_code == 2 and "recipe file not found" in res.output
