"""Run folders record what made them (version, git SHA, recipe, input fingerprint) and refuse the
results of another recipe or other data unless ``--overwrite``; ``write_reports`` is the one writer."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from influence_cli import load_recipe, score, write_reports
from influence_cli.cli import app
from influence_cli.errors import InfluenceError

runner = CliRunner()


def _score(run, *extra: str):
    return runner.invoke(app, ["score", str(run.recipe_path), "-q", "--top-k", "2", *extra])


def test_run_json_records_what_made_the_results(tiny_recipe):
    run = tiny_recipe("mlp", n_train=5, n_test=2)
    assert _score(run).exit_code == 0
    info = json.loads((run.dir / "out" / "run.json").read_text())
    assert {"version", "git_sha", "inputs", "recipe", "checkpoints", "commands"} <= set(info)
    assert set(info["inputs"]["files"]) == {"the training data", "the model code", "the test data"}
    assert info["recipe"]["batch_size"] == 4 and info["recipe"]["factorize"] is not None  # defaults included


def test_another_runs_folder_is_refused_unless_overwrite(tiny_recipe):
    run = tiny_recipe("mlp", n_train=5, n_test=2)
    assert _score(run).exit_code == 0
    before = (run.dir / "out" / "influence.json").read_bytes()
    assert _score(run, "--test-indices", "1").exit_code == 0  # same recipe and data: another question is fine
    run.rewrite(batch_size=2)  # how, not what, is computed: still this run's folder
    assert _score(run).exit_code == 0
    torch.save({"inputs": torch.randn(5, 6), "labels": torch.tensor([0, 1, 2, 1, 0])}, run.dir / "train.pt")
    res = _score(run)
    assert res.exit_code == 2 and res.stderr == (
        f"error: output {run.dir / 'out'}: holds the results of an earlier version of this recipe (different: the "
        "training data); give another folder, or --overwrite to replace them\n")
    run.rewrite(layers=["4"])
    assert "(different: `layers`, the training data)" in _score(run).stderr
    assert (run.dir / "out" / "influence.json").read_bytes() != before  # the second question's answer
    assert _score(run, "--overwrite").exit_code == 0


def test_overwrite_replaces_the_other_runs_results_instead_of_mixing_them(tiny_recipe):
    """Another recipe's mislabel results do not survive next to this recipe's scores."""
    first, second = tiny_recipe("mlp", n_train=5, n_test=2), tiny_recipe("mlp", n_train=6, n_test=2, seed=3)
    out = first.dir / "out"
    assert runner.invoke(app, ["mislabel-detect", str(first.recipe_path), "-q", "--top", "2"]).exit_code == 0
    assert (out / "mislabels.json").exists()
    res = runner.invoke(app, ["score", str(second.recipe_path), "-q", "--out", str(out), "--overwrite"])
    assert res.exit_code == 0, res.output
    info = json.loads((out / "run.json").read_text())
    assert not (out / "mislabels.json").exists() and not (out / "mislabels.csv").exists()
    assert set(info["commands"]) == {"score"} and info["recipe_path"] == str(second.recipe_path.resolve())
    assert "mislabel-detect" not in (out / "summary.md").read_text()


def test_a_missing_input_is_reported_before_the_folder_question(tiny_recipe):
    run = tiny_recipe("mlp", n_train=5, n_test=2)
    assert _score(run).exit_code == 0
    (run.dir / "train.pt").unlink()
    res = _score(run)
    assert res.exit_code == 2 and res.stderr == f"error: data.train.path: file not found: {run.dir / 'train.pt'}\n"


def test_a_damaged_run_json_is_an_error_not_silently_replaced(tiny_recipe):
    run = tiny_recipe("mlp", n_train=5, n_test=2)
    (run.dir / "out").mkdir()
    (run.dir / "out" / "run.json").write_text("{not json")
    res = _score(run)
    assert res.exit_code == 2 and res.stderr.startswith(f"error: {run.dir / 'out' / 'run.json'}: cannot read:")
    assert (run.dir / "out" / "run.json").read_text() == "{not json"


def test_write_reports_from_a_notebook(tiny_recipe, tmp_path):
    run = tiny_recipe("mlp", n_train=5, n_test=2)
    result = score(load_recipe(run.recipe_path), k=2)
    written = write_reports(result, tmp_path / "nb")
    assert {p.name for p in written} == {"influence.json", "influence.csv", "summary.md", "run.json"}
    assert json.loads((tmp_path / "nb" / "run.json").read_text())["commands"].keys() == {"score"}
    other = tiny_recipe("mlp", n_train=5, n_test=2, seed=1)
    with pytest.raises(InfluenceError, match="holds the results of .*recipe.yaml \\(different: the test data, the training data\\)"):
        write_reports(score(load_recipe(other.recipe_path), k=2), tmp_path / "nb")


def test_curvature_settings_and_the_projection_sketch_are_part_of_a_folders_results(tiny_recipe):
    """Another ``curvature:`` changes ekfac/arnoldi results: refused like another `layers`; a projection is
    recorded with its sketch family (gradients projected by another sketch differ); a run.json written
    before a key was recorded is not refused for lacking it."""
    run = tiny_recipe("mlp", n_train=5, n_test=2, projection={"dim": 4})
    assert _score(run).exit_code == 0
    run.rewrite(curvature={"damping": 0.5})
    assert "(different: `curvature`)" in _score(run).stderr
    info_path = run.dir / "out" / "run.json"
    info = json.loads(info_path.read_text())
    del info["inputs"]["recipe"]["curvature"]  # as an older version wrote it
    info_path.write_text(json.dumps(info))
    assert _score(run).exit_code == 0
    from influence_cli.gradients.store import store_key
    from influence_cli.recipe.schema import SKETCH_VERSION
    assert store_key(load_recipe(run.recipe_path))["projection"] == {"dim": 4, "seed": 0, "sketch": SKETCH_VERSION}
