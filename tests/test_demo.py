"""The built-in demo: planted noise and backdoor, the written run, and the command end to end at reduced size."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from influence_cli.cli import app
from influence_cli.demo import DIGIT_PAIRS, TRIGGER, Backdoor, digits_data, plant_backdoor, run_demo
from influence_cli.errors import ParameterError

runner = CliRunner()


def test_planted_noise_is_seeded_and_exact():
    pairs = digits_data(seed=1, noise="pairs", n_train=500)
    flipped = pairs.flipped
    assert len(flipped) == 50 and len(pairs.test_y) == 297
    partner = {a: b for a, b in DIGIT_PAIRS} | {b: a for a, b in DIGIT_PAIRS}
    assert all(partner[int(c)] == int(g) for c, g in zip(pairs.clean_labels[flipped], pairs.labels[flipped]))
    assert torch.equal(digits_data(seed=1, noise="pairs", n_train=500).labels, pairs.labels)
    uniform = digits_data(seed=1, noise="uniform", n_train=500)
    assert len(uniform.flipped) == 50 and torch.equal(uniform.clean_labels, pairs.clean_labels)
    assert not torch.equal(digits_data(seed=2, n_train=500).labels, pairs.labels)
    assert 0.0 <= float(pairs.train_x.min()) and float(pairs.train_x.max()) <= 1.0


def test_backdoor_is_seeded_and_leaves_the_label_noise_alone():
    data = digits_data(seed=1, n_train=500)
    planted = plant_backdoor(data, Backdoor(n_poison=12, source=2, target=7), seed=1)
    poison = planted.poison
    assert len(poison) == 12 and torch.equal(poison, plant_backdoor(data, Backdoor(12, 2, 7), seed=1).poison)
    assert (data.labels[poison] == 2).all() and (data.clean_labels[poison] == 2).all()   # never a flipped one
    assert (planted.labels[poison] == 7).all() and torch.equal(planted.flipped, data.flipped)
    assert (planted.train_x[poison][:, 0, 5:8, 5:8] == TRIGGER).all()
    rest = torch.ones(500, dtype=torch.bool)
    rest[poison] = False
    assert torch.equal(planted.train_x[rest], data.train_x[rest]) and torch.equal(planted.labels[rest], data.labels[rest])
    with pytest.raises(ParameterError, match="n_poison: at most") as caught:
        plant_backdoor(data, Backdoor(n_poison=400), seed=1)
    assert caught.value.parameter == "n_poison"


def test_demo_end_to_end_writes_a_recipe_mislabel_detect_accepts(tmp_path):
    out = tmp_path / "demo"
    res = runner.invoke(app, ["demo", "--out", str(out), "--n-train", "400", "--epochs", "10"])
    assert res.exit_code == 0, res.output
    # the backdoor (11 poison by default at this size): its target is found, flagged, with its poison
    said = " ".join(res.output.split())
    assert "ranks #1 of 298 candidates" in said and "flagged; 1 flagged in all" in said
    truth = json.loads((out / "audit" / "ground_truth.json").read_text())
    targets = json.loads((out / "audit" / "targets.json").read_text())
    assert truth["target_test_indices"] == [297] and len(truth["poison_train_indices"]) == 11
    top = targets["test"][0]
    assert top["test_index"] == 297 and top["flagged"] and top["prediction"] == 7
    suspects = {e["train_index"] for e in top["suspects"]}
    assert len(suspects & set(truth["poison_train_indices"])) >= 8
    assert not set(truth["poison_train_indices"]) & set(truth["flipped_train_indices"])
    assert "inspected" in res.output and "top proponents" in res.output and str(out / "recipe.yaml") in res.output
    ckpts = sorted((out / "checkpoints").glob("epoch*.pt"))
    assert len(ckpts) == 10
    assert all(isinstance(torch.load(p, weights_only=True)["learning_rate"], float) for p in ckpts)
    planted = json.loads((out / "planted_noise.json").read_text())
    train = torch.load(out / "data" / "train.pt", weights_only=True)
    assert len(planted["flipped"]) == 40 and planted["backdoor"]["poison_train_indices"] == truth["poison_train_indices"]
    assert all(int(train["labels"][e["train_index"]]) == e["given_label"] != e["true_label"]
               for e in planted["flipped"])
    assert {"mislabels.json", "influence.json", "ground_truth.json", "run.json", "report.html"} <= {
        p.name for p in (out / "audit").iterdir()}

    # the written recipe is a real one: mislabel-detect runs on it from another folder
    res = runner.invoke(app, ["mislabel-detect", str(out / "recipe.yaml"), "--top", "30", "--out",
                              str(tmp_path / "again"), "-q"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "again" / "mislabels.json").read_text())
    top = {e["train_index"] for e in data["ranking"][:30]}
    assert len(top & {e["train_index"] for e in planted["flipped"]}) >= 15  # 10 short epochs, 400 examples


def test_demo_rejects_bad_sizes(tmp_path):
    res = runner.invoke(app, ["demo", "--out", str(tmp_path), "--n-train", "5"])
    assert res.exit_code == 2 and "error: --n-train: must be between 100 and 1700, got 5" in res.output
    res = runner.invoke(app, ["demo", "--out", str(tmp_path), "--n-poison", "-1"])
    assert res.exit_code == 2 and "error: --n-poison: must be 0 or more, got -1" in res.output
    res = runner.invoke(app, ["demo", "--out", str(tmp_path), "--n-train", "100", "--n-poison", "50"])
    assert res.exit_code == 2 and "error: --n-poison: at most" in res.output
    assert not any(tmp_path.iterdir())  # refused before anything is written


def test_run_demo_names_the_bad_parameter(tmp_path):
    for kwargs, parameter in (({"n_train": 5}, "n_train"), ({"epochs": 0}, "epochs"), ({"n_poison": -1}, "n_poison")):
        with pytest.raises(ParameterError, match=f"^{parameter}: ") as caught:
            run_demo(tmp_path, **kwargs)
        assert caught.value.parameter == parameter
    assert not any(tmp_path.iterdir())
