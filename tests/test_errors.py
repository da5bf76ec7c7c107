"""Broken recipes, checkpoints and data files: each gives exactly one line on stderr and exit code 2."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import TinyRun
from influence_cli.cli import app

runner = CliRunner()


def _score(run: TinyRun, *extra: str):
    return runner.invoke(app, ["score", str(run.recipe_path), "-q", "--out", str(run.dir / "report"), *extra])


def _save_state(run: TinyRun, c: int, **changes: torch.Tensor | None) -> None:
    state = {k: v for k, v in {**run.states[c], **changes}.items() if v is not None}
    torch.save(state, run.ckpt_paths[c])


def _inf_input() -> torch.Tensor:
    x = torch.randn(5, 6)
    x[3, 2] = float("inf")
    return x


def _set_lr(run: TinyRun, c: int, lr: object) -> None:
    run.data["checkpoints"][c]["learning_rate"] = lr
    run.rewrite()


LABELS5 = torch.tensor([0, 1, 2, 1, 0])

# id -> (tiny_recipe options, how to break the folder, expected message; {dir} = the recipe folder,
# {recipe} = the recipe file)
CASES = {
    "malformed-yaml": ({}, lambda r: r.recipe_path.write_text("model: [unclosed\nloss: x\n"),
                       "{recipe}:2:5: malformed YAML: expected ',' or ']', but got ':'"),
    "not-a-mapping": ({}, lambda r: r.recipe_path.write_text("- a\n- b\n"),
                      "{recipe}: the recipe must be a mapping of keys, got list"),
    "unknown-key": ({}, lambda r: r.rewrite(batchsize=3), "{recipe}: batchsize: unknown key"),
    "unknown-nested-key": ({}, lambda r: r.rewrite(model={**r.data["model"], "kwarg": {}}),
                           "{recipe}: model.kwarg: unknown key"),
    "wrong-type": ({}, lambda r: r.rewrite(batch_size="many"),
                   "{recipe}: batch_size: Input should be a valid integer"),
    "missing-section": ({}, lambda r: r.rewrite(model=None), "{recipe}: model: Field required"),
    "bad-device": ({}, lambda r: r.rewrite(device="gpu"),
                   "{recipe}: device: must be auto, cpu, cuda, cuda:N or mps, not 'gpu'"),
    "no-checkpoints": ({}, lambda r: r.rewrite(checkpoints=[]),
                       "{recipe}: checkpoints: List should have at least 1 item after validation, not 0"),
    "unknown-factory": ({}, lambda r: r.rewrite(model={"factory": r.data["model"]["factory"] + "x"}),
                        "model.factory: '{tiny_models}' has no callable named 'build_mlpx'"),
    "missing-checkpoint": ({}, lambda r: r.ckpt_paths[1].unlink(),
                           "checkpoints[1] ({dir}/epoch2.pt): file not found"),
    "needs-pickle": ({"formats": ["plain", "pickle"]}, lambda r: None,
                     "checkpoints[1] ({dir}/epoch2.pt): the file needs pickle to load, which can run code; set "
                     "`trust_checkpoints: true` in the recipe if you trust it"),
    "corrupt-checkpoint": ({}, lambda r: r.ckpt_paths[0].write_bytes(b"not a checkpoint"),
                           "checkpoints[0] ({dir}/epoch1.pt): not a readable PyTorch checkpoint (corrupt or "
                           "another format)"),
    "checkpoint-missing-key": ({}, lambda r: _save_state(r, 0, **{"4.bias": None}),
                               "checkpoints[0] ({dir}/epoch1.pt): does not fit the model: missing 1 key(s) the "
                               "model needs, e.g. '4.bias'"),
    "checkpoint-extra-key": ({}, lambda r: _save_state(r, 1, **{"9.weight": torch.zeros(2)}),
                             "checkpoints[1] ({dir}/epoch2.pt): does not fit the model: 1 key(s) the model does "
                             "not have, e.g. '9.weight'"),
    "checkpoint-shape": ({}, lambda r: _save_state(r, 1, **{"2.weight": torch.zeros(8, 7)}),
                         "checkpoints[1] ({dir}/epoch2.pt): 2.weight has shape (8, 7) but the model expects (8, 8)"),
    "auto-lr-missing": ({}, lambda r: _set_lr(r, 0, "auto"),
                        "checkpoints[0] ({dir}/epoch1.pt): learning_rate is auto but the file has no numeric "
                        "learning_rate/lr key or optimizer state; set learning_rate in the recipe"),
    "glob-matches-nothing": ({}, lambda r: r.rewrite(checkpoints={"glob": "ckpts/*.pt", "learning_rate": 0.1}),
                             "checkpoints.glob: no file matches 'ckpts/*.pt' in {dir}"),
    "lr-list-length": ({}, lambda r: r.rewrite(checkpoints={"glob": "epoch*.pt", "learning_rate": [0.1, 0.2, 0.3]}),
                       "checkpoints.learning_rate: 3 learning rates for 2 checkpoints matching 'epoch*.pt'"),
    "unknown-layer": ({}, lambda r: r.rewrite(layers=["4", "fc*"]),
                      "layers: 'fc*' matches no trainable module or parameter of the model (modules: 0, 2, 4)"),
    "missing-data-file": ({}, lambda r: (r.dir / "train.pt").unlink(),
                          "data.train.path: file not found: {dir}/train.pt"),
    "data-missing-labels": ({}, lambda r: torch.save({"inputs": torch.randn(2, 6)}, r.dir / "train.pt"),
                            "data.train: {dir}/train.pt has no 'labels' entry (has: inputs)"),
    "no-test-split": ({}, lambda r: r.rewrite(data={"train": r.data["data"]["train"]}),
                      "data.test: this command needs a test split; add it to the recipe"),
    "empty-data": ({"train": (torch.randn(0, 6), torch.zeros(0, dtype=torch.long))}, lambda r: None,
                   "data.train: no examples"),
    "rows-mismatch": ({"train": (torch.randn(4, 6), LABELS5)}, lambda r: None,
                      "data.train: inputs have [4] rows but labels have 5"),
    "labels-out-of-range": ({"train": (torch.randn(5, 6), torch.tensor([0, 1, 3, 1, 0]))}, lambda r: None,
                            "data.train: label 3 of example 2 is out of range for a model with 3 outputs"),
    "labels-not-integer": ({"train": (torch.randn(5, 6), torch.tensor([0, 1, 0.5, 1, 0]))}, lambda r: None,
                           "data.train: labels must be class indices for cross_entropy, got non-integer values"),
    "wrong-input-shape": ({"test": (torch.randn(2, 5), torch.tensor([0, 1]))}, lambda r: None,
                          "data.test: the model rejects inputs of shape (2, 5): addmm: mat1 and mat2 shapes cannot "
                          "be multiplied (2x5 and 6x8)"),
    "labels-2d": ({"train": (torch.randn(5, 6), LABELS5[:, None])}, lambda r: None,
                  "data.train: cross_entropy needs one class index per example (shape [N]), got labels of shape (5, 1)"),
    "integer-checkpoint-tensor": ({}, lambda r: _save_state(r, 0, **{"0.weight": r.states[0]["0.weight"].long()}),
                                  "checkpoints[0] ({dir}/epoch1.pt): 0.weight holds torch.int64 values but the model "
                                  "expects torch.float64"),
    "mse-with-class-labels": ({}, lambda r: r.rewrite(loss="mse"),
                              "data.train: loss 'mse' cannot compare model outputs of shape (2, 3) with targets of "
                              "shape (2,): shape '[2, 3]' is invalid for input of size 2"),
    "loss-not-per-example": ({}, lambda r: (r.dir.joinpath("l.py").write_text(
                                 "def mean_loss(out, y):\n    return (out ** 2).mean()\n"), r.rewrite(loss="l.py:mean_loss")),
                             "loss: 'l.py:mean_loss' must return one loss per example (shape [2] for 2 examples), "
                             "got ()"),
    "inf-input-train": ({"train": (_inf_input(), LABELS5)}, lambda r: None,
                        "data.train: the gradient of example 3 at checkpoint {dir}/epoch1.pt is not finite (NaN or "
                        "inf loss); check that example's inputs and label"),
    "inf-input-test": ({"test": (_inf_input(), LABELS5)}, lambda r: None,
                       "data.test: the gradient of example 3 at checkpoint {dir}/epoch1.pt is not finite (NaN or "
                       "inf loss); check that example's inputs and label"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_input_gives_one_line_and_exit_2(tiny_recipe, case):
    options, breaks, message = CASES[case]
    run = tiny_recipe("mlp", n_train=5, n_test=2, **options)
    tiny_models = run.data["model"]["factory"].rpartition(":")[0]
    breaks(run)
    res = _score(run)
    expected = message.format(dir=run.dir, recipe=run.recipe_path, tiny_models=tiny_models)
    assert (res.exit_code, res.stderr) == (2, f"error: {expected}\n")
    assert res.stdout == ""
    assert not (run.dir / "report" / "influence.json").exists()


def test_missing_recipe_file(tmp_path):
    res = runner.invoke(app, ["score", str(tmp_path / "nope.yaml"), "-q"])
    assert (res.exit_code, res.stderr) == (2, f"error: {tmp_path / 'nope.yaml'}: recipe file not found\n")


def test_pickle_checkpoint_loads_when_trusted(tiny_recipe):
    """The same file that is refused by default loads with `trust_checkpoints: true`."""
    run = tiny_recipe("mlp", n_train=5, n_test=2, formats=["plain", "pickle"], trust_checkpoints=True)
    res = _score(run, "--top-k", "2")
    assert res.exit_code == 0, res.output
    data = json.loads((run.dir / "report" / "influence.json").read_text())
    assert [c["learning_rate"] for c in data["checkpoints"]] == run.learning_rates
    assert len(data["test"][0]["proponents"]) == 2
