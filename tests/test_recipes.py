"""Every example recipe in ``recipes/`` runs ``score`` end to end: each test copies the recipe
folder, writes the data and checkpoints the recipe points to, and checks the reports' values."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fixtures.hf_runs import make_model_dir, make_texts, train_with_trainer, write_jsonl
from fixtures.image_runs import folder_tensors, make_imagefolder, train_plain
from influence_cli.cli import app
from influence_cli.loading.imports import import_callable
from influence_cli.recipe import load_recipe
from reference import reference_grads, reference_scores

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
COVERED = {"tensors-factory", "torchvision-imagefolder", "hf-trainer-text"}
runner = CliRunner()


def _copy(name: str, tmp_path: Path) -> Path:
    folder = tmp_path / name
    shutil.copytree(RECIPES / name, folder)
    return folder


def _score(folder: Path, *args: str) -> dict:
    res = runner.invoke(app, ["score", str(folder / "recipe.yaml"), "--out", str(folder / "report"), "-q", *args])
    assert res.exit_code == 0, res.output
    return json.loads((folder / "report" / "influence.json").read_text())


def test_every_recipe_is_covered_and_valid():
    assert {p.parent.name for p in RECIPES.glob("*/recipe.yaml")} == COVERED
    for name in COVERED:
        load_recipe(RECIPES / name / "recipe.yaml")


def test_tensors_factory_recipe(tmp_path):
    folder = _copy("tensors-factory", tmp_path)
    recipe = load_recipe(folder / "recipe.yaml")
    build = import_callable(recipe.model.factory, base_dir=folder, key="model.factory")
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 20, generator=gen), torch.randint(0, 4, (40,), generator=gen)
    torch.save({"inputs": x[:32], "labels": y[:32]}, folder / "train.pt")
    torch.save({"inputs": x[32:], "labels": y[32:]}, folder / "test.pt")
    torch.manual_seed(0)
    ckpts = train_plain(build(**recipe.model.kwargs), x[:32], y[:32], folder / "ckpts", lr=0.1)
    data = _score(folder, "--top-k", "32")
    rates = [c["learning_rate"] for c in data["checkpoints"]]
    assert rates == pytest.approx([0.1, 0.05])
    states = [torch.load(p, weights_only=True)["model_state_dict"] for p in ckpts]
    factory = lambda: build(**recipe.model.kwargs)  # noqa: E731
    want = reference_scores("tracin", reference_grads(factory, states, x[:32], y[:32]),
                            reference_grads(factory, states, x[32:], y[32:]), rates)
    for row, test in enumerate(data["test"]):
        got = torch.tensor([e["score"] for e in test["proponents"]], dtype=torch.float64)
        idx = torch.tensor([e["train_index"] for e in test["proponents"]])
        torch.testing.assert_close(got, want[row, idx], rtol=1e-4, atol=1e-6)  # the recipe runs in float32
        torch.testing.assert_close(got, want[row].sort(descending=True).values, rtol=1e-4, atol=1e-6)


def test_torchvision_imagefolder_recipe(tmp_path):
    folder = _copy("torchvision-imagefolder", tmp_path)
    make_imagefolder(folder / "images" / "train", 4)
    make_imagefolder(folder / "images" / "test", 1, seed=1)
    x, y = folder_tensors(folder / "images" / "train")
    import torchvision

    train_plain(torchvision.models.resnet18(num_classes=3), (x - 0.5) / 0.25, y, folder / "ckpts", lr=0.01)
    data = _score(folder, "--top-k", "2", "--test-labels", "predicted")
    assert [c["learning_rate"] for c in data["checkpoints"]] == pytest.approx([0.01, 0.005])
    for test in data["test"]:
        assert Path(test["path"]).parent.parent == folder / "images" / "test"
        for entry in test["proponents"] + test["opponents"]:
            path = Path(entry["path"])
            assert path.parent.parent == folder / "images" / "train"
            assert sorted(p.name for p in path.parents[1].iterdir()).index(path.parent.name) == entry["label"]
        assert test["proponents"][0]["score"] >= test["proponents"][1]["score"] > test["opponents"][1]["score"]


def test_hf_trainer_text_recipe(tmp_path):
    folder = _copy("hf-trainer-text", tmp_path)
    make_model_dir(folder / "model")
    rows = make_texts(12)
    (folder / "data").mkdir()
    write_jsonl(folder / "data" / "train.jsonl", rows)
    write_jsonl(folder / "data" / "test.jsonl", make_texts(2, seed=3))
    train_with_trainer(folder / "model", rows, folder / "out", steps=2, save_steps=1, lr=0.02)
    data = _score(folder, "--top-k", "3")
    assert [Path(c["path"]).parent.name for c in data["checkpoints"]] == ["checkpoint-1", "checkpoint-2"]
    assert [c["learning_rate"] for c in data["checkpoints"]] == pytest.approx([0.02, 0.01])  # linear decay
    assert [t["text"] for t in data["test"]] == [r["text"] for r in make_texts(2, seed=3)]
    for entry in data["test"][0]["proponents"]:
        assert entry["text"] == rows[entry["train_index"]]["text"]
