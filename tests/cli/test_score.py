"""``influence-cli score`` end to end on a tiny recipe (CliRunner), checked against the library."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import ATOL, RTOL
from influence_cli import load_recipe, score
from influence_cli.cli import app
from reference import reference_grads, reference_scores

runner = CliRunner()
K = 3


@pytest.fixture
def run(tiny_recipe):
    return tiny_recipe("mlp", n_train=8, n_test=5, learning_rates=(0.4, 0.1), formats=["plain", "training"])


def _invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _final_predictions(run) -> torch.Tensor:
    model = run.factory()
    model.load_state_dict(run.states[-1])
    with torch.no_grad():
        return model.double()(run.test[0].double()).argmax(1)


def test_score_writes_reports_matching_the_library(run, tmp_path):
    out = tmp_path / "report"
    res = _invoke("score", run.recipe_path, "--method", "gas", "--top-k", K, "--test-indices", "0,2:4",
                  "--save-matrix", "--out", out, "--quiet")
    assert res.exit_code == 0, res.output
    assert res.output == ""
    assert {"influence.csv", "influence.json", "scores.safetensors", "summary.md"} <= {p.name for p in out.iterdir()}
    assert not list(out.glob("*.part"))
    lib = score(load_recipe(run.recipe_path), method="gas", test_indices=[0, 2, 3], k=K, keep_matrix=True)
    data = json.loads((out / "influence.json").read_text())

    # documented shape
    assert set(data) == {"method", "recipe", "checkpoints", "test"}
    assert data["method"] == "gas"
    assert data["recipe"]["dtype"] == "float64" and data["recipe"]["batch_size"] == 4
    assert [(c["path"], c["learning_rate"]) for c in data["checkpoints"]] == [
        (str(p), lr) for p, lr in zip(run.ckpt_paths, run.learning_rates)]
    assert all(len(c["sha256"]) == 64 for c in data["checkpoints"])
    predictions = _final_predictions(run)
    train_labels = run.train[1]
    assert [t["test_index"] for t in data["test"]] == [0, 2, 3]
    for row, t in enumerate(data["test"]):
        assert set(t) == {"test_index", "label", "prediction", "loss_label", "proponents", "opponents"}
        i = t["test_index"]
        assert t["label"] == t["loss_label"] == int(run.test[1][i])
        assert t["prediction"] == int(predictions[i])
        for side, (values, indices), decreasing in (("proponents", lib.passes.proponents, True),
                                                    ("opponents", lib.passes.opponents, False)):
            entries = t[side]
            assert len(entries) == K and all(set(e) == {"train_index", "score", "label"} for e in entries)
            assert [e["train_index"] for e in entries] == indices[row].tolist()
            assert [e["score"] for e in entries] == pytest.approx(values[row].tolist(), rel=1e-12)
            assert [e["label"] for e in entries] == [int(train_labels[j]) for j in indices[row]]
            scores = [e["score"] for e in entries]
            assert scores == sorted(scores, reverse=decreasing)

    # influence.csv: one row per test × side × rank, same values as the JSON
    with open(out / "influence.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["test_index", "test_label", "prediction", "side", "rank", "train_index", "score",
                             "train_label"]
    assert len(rows) == 3 * 2 * K
    expected = [(t["test_index"], side, rank, e["train_index"], e["score"])
                for t in data["test"] for side in ("proponents", "opponents")
                for rank, e in enumerate(t[side], start=1)]
    assert [(int(r["test_index"]), r["side"], int(r["rank"]), int(r["train_index"]), float(r["score"]))
            for r in rows] == expected

    # --save-matrix: the full matrix, exactly the library's
    saved = load_file(str(out / "scores.safetensors"))
    assert saved["scores"].shape == (3, 8)
    torch.testing.assert_close(saved["scores"], lib.passes.matrix, rtol=0, atol=0)
    assert saved["test_indices"].tolist() == [0, 2, 3] and saved["train_indices"].tolist() == list(range(8))
    summary = (out / "summary.md").read_text().split("\n", 1)[1]  # after the section marker
    assert summary.startswith("# Influence (gas)") and "## Test example 2" in summary


def test_score_predicted_labels_match_reference(run, tmp_path):
    """--test-labels predicted takes the test loss at the final checkpoint's prediction."""
    out = tmp_path / "pred"
    res = _invoke("score", run.recipe_path, "--test-labels", "predicted", "--save-matrix", "--out", out, "-q")
    assert res.exit_code == 0, res.output
    data = json.loads((out / "influence.json").read_text())
    predictions = _final_predictions(run)
    assert [t["loss_label"] for t in data["test"]] == predictions.tolist()
    assert [t["label"] for t in data["test"]] == run.test[1].tolist()
    assert predictions.tolist() != run.test[1].tolist()  # the option matters on this data
    train = reference_grads(run.factory, run.states, *run.train)
    test = reference_grads(run.factory, run.states, run.test[0], predictions)
    torch.testing.assert_close(load_file(str(out / "scores.safetensors"))["scores"],
                               reference_scores("tracin", train, test, run.learning_rates), rtol=RTOL, atol=ATOL)


def test_score_default_output_and_table(run):
    """Without --out, reports go to the recipe's `output` (relative to the recipe); the terminal
    shows a table and the files written."""
    res = _invoke("score", run.recipe_path, "--top-k", "2")
    assert res.exit_code == 0, res.output
    out = run.dir / "out"
    assert (out / "influence.json").is_file() and not (out / "scores.safetensors").exists()
    data = json.loads((out / "influence.json").read_text())
    assert len(data["test"]) == 5
    assert "Influence (tracin), first 5 test examples" in res.stdout and "wrote" in res.stdout
    top = data["test"][0]["proponents"][0]
    assert f"{top['train_index']}:{top['score']:.3g}" in res.stdout


def test_score_help():
    res = _invoke("score", "--help")
    assert res.exit_code == 0 and "--test-labels" in res.output and "--save-matrix" in res.output


@pytest.mark.parametrize("spec, message", [
    ("9", "--test-indices: index 9 is out of range for 5 examples"),
    ("3:3", "--test-indices: no indices selected"),
    ("a:b", "--test-indices: cannot read 'a:b'; use '0,3,7', '0:100' (end exclusive) or a mix ('0:10,15')"),
])
def test_score_bad_test_indices(run, tmp_path, spec, message):
    res = _invoke("score", run.recipe_path, "--test-indices", spec, "--out", tmp_path / "x", "-q")
    assert res.exit_code == 2
    assert res.stderr.strip() == f"error: {message}"
    assert not (tmp_path / "x").exists()


def test_score_regression_loss(tiny_recipe, tmp_path):
    """With `loss: mse` there is no prediction; labels are target vectors; `predicted` is refused."""
    gen = torch.Generator().manual_seed(5)
    run = tiny_recipe("mlp", loss="mse", train=(torch.randn(6, 6, generator=gen), torch.randn(6, 3, generator=gen)),
                      test=(torch.randn(2, 6, generator=gen), torch.randn(2, 3, generator=gen)))
    res = _invoke("score", run.recipe_path, "--top-k", "2", "--save-matrix", "--out", tmp_path / "r", "-q")
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "r" / "influence.json").read_text())
    first = data["test"][0]
    assert first["prediction"] is None
    assert first["label"] == pytest.approx(run.test[1][0].tolist())
    mse = lambda out, y: ((out - y) ** 2).mean()  # noqa: E731
    train = reference_grads(run.factory, run.states, *run.train, loss=mse)
    test = reference_grads(run.factory, run.states, *run.test, loss=mse)
    torch.testing.assert_close(load_file(str(tmp_path / "r" / "scores.safetensors"))["scores"],
                               reference_scores("tracin", train, test, run.learning_rates), rtol=RTOL, atol=ATOL)
    res = _invoke("score", run.recipe_path, "--test-labels", "predicted", "--out", tmp_path / "p", "-q")
    assert res.exit_code == 2
    assert res.stderr == "error: --test-labels: predicted needs a classification loss, not 'mse'\n"



def test_a_test_split_without_labels_is_explained_at_the_predictions(run, tmp_path) -> None:
    torch.save({"inputs": run.test[0]}, run.dir / "test.pt")
    out = tmp_path / "out"
    given = _invoke("score", run.recipe_path, "--out", out)
    assert given.exit_code == 2
    assert given.stderr.strip() == ("error: --test-labels: data.test has no labels; explain the model's predictions "
                                    "with --test-labels predicted")
    ok = _invoke("score", run.recipe_path, "--out", out, "--test-labels", "predicted")
    assert ok.exit_code == 0, ok.output
    tests = json.loads((out / "influence.json").read_text())["test"]
    assert [t["label"] for t in tests] == [None] * len(tests)
    assert [t["loss_label"] for t in tests] == [t["prediction"] for t in tests]


def test_a_test_side_that_cannot_fit_is_refused_before_the_work(run, tmp_path, monkeypatch) -> None:
    import influence_cli.engine as engine

    monkeypatch.setattr(engine, "available_memory", lambda device: 1000)  # bytes free
    result = _invoke("score", run.recipe_path, "--out", tmp_path / "out")
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert message.startswith("error: one test example's gradients over 2 checkpoints take 0.00 GiB, more than the "
                              "test side's budget (0.00 GiB: half the free memory of cpu);")
    assert message.endswith("set `projection: {dim: K}`")
    assert not (tmp_path / "out").exists()


def test_repeated_test_indices_are_explained_once(run, tmp_path) -> None:
    out = tmp_path / "out"
    assert _invoke("score", run.recipe_path, "--out", out, "--test-indices", "1,1,0:2", "-q").exit_code == 0
    assert [t["test_index"] for t in json.loads((out / "influence.json").read_text())["test"]] == [1, 0]


def test_score_method_ekfac_matches_the_library(run, tmp_path):
    out = tmp_path / "ekfac"
    res = _invoke("score", run.recipe_path, "--method", "ekfac", "--top-k", K, "--test-indices", "1", "--out", out)
    assert res.exit_code == 0, res.output
    written = json.loads((out / "influence.json").read_text())
    assert written["method"] == "ekfac"
    lib = score(load_recipe(run.recipe_path), method="ekfac", test_indices=[1], k=K)
    got = [p["score"] for p in written["test"][0]["proponents"]]
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), lib.proponents[0][0], rtol=RTOL, atol=ATOL)
