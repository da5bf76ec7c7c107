"""Broken recipes, checkpoints, data files and options: a table of bad inputs, each of which must give
exactly one line on stderr in this project's words, exit code 2, no traceback, and leave every input
file and every previous output byte-for-byte as it was."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import TinyRun, write_tiny_recipe
from influence_cli.cli import app

runner = CliRunner()

# A message ending in UPSTREAM is this project's words followed by an upstream library's own
# explanation, whose wording changes between releases: only the project's part is asserted.
UPSTREAM = " …"


def _score(run: TinyRun, *extra: str, recipe: Path | None = None):
    return runner.invoke(app, ["score", str(recipe or run.recipe_path), "-q", "--out", str(run.dir / "report"),
                               *extra])


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


def _set_ckpt(run: TinyRun, c: int, **entry: object) -> None:
    run.data["checkpoints"][c].update(entry)
    run.rewrite()


def _set_split(run: TinyRun, split: str, **spec: object) -> None:
    run.data["data"][split] = spec
    run.rewrite()


def _write_module(run: TinyRun, name: str, code: str) -> None:
    run.dir.joinpath(name).write_text(code)


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (what a failing run must leave unchanged)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


LABELS5 = torch.tensor([0, 1, 2, 1, 0])

# id -> (tiny_recipe options, how to break the folder, expected message; {dir} = the recipe folder,
# {recipe} = the recipe file)
CASES = {
    "malformed-yaml": ({}, lambda r: r.recipe_path.write_text("model: [unclosed\nloss: x\n"),
                       "{recipe}:2:5: malformed YAML:" + UPSTREAM),
    "not-a-mapping": ({}, lambda r: r.recipe_path.write_text("- a\n- b\n"),
                      "{recipe}: the recipe must be a mapping of keys, got list"),
    "unknown-key": ({}, lambda r: r.rewrite(batchsize=3), "{recipe}: batchsize: unknown key (did you mean 'batch_size'?)"),
    "unknown-nested-key": ({}, lambda r: r.rewrite(model={**r.data["model"], "kwarg": {}}),
                           "{recipe}: model.kwarg: unknown key (did you mean 'kwargs'?)"),
    "wrong-type": ({}, lambda r: r.rewrite(batch_size="many"),
                   "{recipe}: batch_size: expected an integer, got 'many'"),
    "missing-section": ({}, lambda r: r.rewrite(model=None), "{recipe}: model: required key is missing"),
    "bad-device": ({}, lambda r: r.rewrite(device="gpu"),
                   "{recipe}: device: must be auto, cpu, cuda or cuda:N, not 'gpu'"),
    "no-checkpoints": ({}, lambda r: r.rewrite(checkpoints=[]),
                       "{recipe}: checkpoints: needs at least one checkpoint"),
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
                        "learning_rate/lr key, scheduler or optimizer state; set learning_rate in the recipe"),
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
                          "data.test: the model rejects inputs of shape (2, 5):" + UPSTREAM),
    "labels-2d": ({"train": (torch.randn(5, 6), LABELS5[:, None])}, lambda r: None,
                  "data.train: cross_entropy needs one class index per example (shape [N]), got labels of shape (5, 1)"),
    "integer-checkpoint-tensor": ({}, lambda r: _save_state(r, 0, **{"0.weight": r.states[0]["0.weight"].long()}),
                                  "checkpoints[0] ({dir}/epoch1.pt): 0.weight holds torch.int64 values but the model "
                                  "expects torch.float64"),
    "mse-with-class-labels": ({}, lambda r: r.rewrite(loss="mse"),
                              "data.train: loss 'mse' cannot compare model outputs of shape (2, 3) with targets of "
                              "shape (2,):" + UPSTREAM),
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



# More bad inputs: (tiny_recipe options, how to break the folder, expected message, extra score options).
# ``breaks`` may return a Path: the recipe argument to give instead of the recipe file.
MORE_CASES = {
    "empty-recipe": ({}, lambda r: r.recipe_path.write_text(""), "{recipe}: the recipe is empty", ()),
    "recipe-is-a-scalar": ({}, lambda r: r.recipe_path.write_text("hello\n"),
                           "{recipe}: the recipe must be a mapping of keys, got str", ()),
    "recipe-is-a-folder": ({}, lambda r: r.dir, "{dir}: is a folder, not a recipe file", ()),
    "batch-size-zero": ({}, lambda r: r.rewrite(batch_size=0), "{recipe}: batch_size: must be greater than 0, got 0", ()),
    "checkpoints-a-string": ({}, lambda r: r.rewrite(checkpoints="epoch1.pt"),
                             "{recipe}: checkpoints: expected a list of checkpoints or a mapping with `glob` or `hf_trainer_dir`, "
                             "got 'epoch1.pt'", ()),
    "lr-negative": ({}, lambda r: _set_lr(r, 0, -0.1),
                    "{recipe}: checkpoints[0].learning_rate: must be greater than or equal to 0, got -0.1", ()),
    "lr-word": ({}, lambda r: _set_lr(r, 0, "fast"),
                "{recipe}: checkpoints[0].learning_rate: expected a number or 'auto', got 'fast'", ()),
    "lr-bool": ({}, lambda r: _set_lr(r, 0, True),
                "{recipe}: checkpoints[0].learning_rate: expected a number or 'auto', got true", ()),
    "factory-file-missing": ({}, lambda r: r.rewrite(model={"factory": "nope.py:build"}),
                             "model.factory: file not found: {dir}/nope.py", ()),
    "factory-without-colon": ({}, lambda r: r.rewrite(model={"factory": "build_mlp"}),
                              "model.factory: expected 'pkg.module:callable' or 'file.py:callable', got 'build_mlp'", ()),
    "factory-raises": ({}, lambda r: (_write_module(r, "m.py", "def build():\n    raise RuntimeError('boom')\n"),
                                      r.rewrite(model={"factory": "m.py:build"})),
                       "model.factory: m.py:build raised RuntimeError: boom", ()),
    "factory-not-a-module": ({}, lambda r: (_write_module(r, "m.py", "def build():\n    return 3\n"),
                                            r.rewrite(model={"factory": "m.py:build"})),
                             "model.factory: returned int, not a torch.nn.Module", ()),
    "factory-syntax-error": ({}, lambda r: (_write_module(r, "m.py", "def build(:\n"),
                                            r.rewrite(model={"factory": "m.py:build"})),
                             "model.factory: importing {dir}/m.py failed: SyntaxError:" + UPSTREAM, ()),
    "two-model-sources": ({}, lambda r: r.rewrite(model={**r.data["model"], "torchvision": "resnet18"}),
                          "{recipe}: model: give exactly one of `factory`, `torchvision` or `transformers`", ()),
    "unknown-torchvision-model": ({}, lambda r: r.rewrite(model={"torchvision": "resnet999"}),
                                  "model.torchvision: unknown torchvision model 'resnet999'", ()),
    "transformers-folder-missing": ({}, lambda r: r.rewrite(model={"transformers": "nope"}),
                                    "model.transformers: not a local folder: {dir}/nope (nothing is downloaded)", ()),
    "checkpoint-empty-file": ({}, lambda r: r.ckpt_paths[0].write_bytes(b""),
                              "checkpoints[0] ({dir}/epoch1.pt): the file is empty (0 bytes)", ()),
    "checkpoint-is-json": ({}, lambda r: r.ckpt_paths[0].write_text('{"a": 1}'),
                           "checkpoints[0] ({dir}/epoch1.pt): not a readable PyTorch checkpoint (corrupt or another "
                           "format)", ()),
    "checkpoint-truncated": ({}, lambda r: r.ckpt_paths[0].write_bytes(r.ckpt_paths[0].read_bytes()[:300]),
                             "checkpoints[0] ({dir}/epoch1.pt): not a readable PyTorch checkpoint (corrupt or another "
                             "format)", ()),
    "checkpoint-holds-a-list": ({}, lambda r: torch.save([r.states[0]], r.ckpt_paths[0]),
                                "checkpoints[0] ({dir}/epoch1.pt): holds a list, not a state dict", ()),
    "checkpoint-holds-a-tensor": ({}, lambda r: torch.save(torch.zeros(3), r.ckpt_paths[0]),
                                  "checkpoints[0] ({dir}/epoch1.pt): holds a Tensor, not a state dict", ()),
    "safetensors-garbage": ({}, lambda r: (r.dir.joinpath("e.safetensors").write_bytes(b"\x10" + b"\x00" * 7 + b"{x"),
                                           _set_ckpt(r, 0, path="e.safetensors")),
                            "checkpoints[0] ({dir}/e.safetensors): not a readable safetensors file:" + UPSTREAM, ()),
    "strip-prefix-matches-nothing": ({}, lambda r: _set_ckpt(r, 0, strip_prefix="encoder."),
                                     "checkpoints[0] ({dir}/epoch1.pt): strip_prefix 'encoder.' matches no state-dict "
                                     "key (keys look like '0.weight')", ()),
    "nan-weight": ({}, lambda r: _save_state(r, 1, **{"2.weight": torch.full((8, 8), float("nan"))}),
                   "checkpoints[1] ({dir}/epoch2.pt): 2.weight has 64 non-finite values (NaN or inf)", ()),
    "data-holds-a-tensor": ({}, lambda r: torch.save(torch.zeros(5, 6), r.dir / "train.pt"),
                            "data.train.path: {dir}/train.pt holds a Tensor, expected a dict with inputs and labels", ()),
    "data-garbage": ({}, lambda r: (r.dir / "train.pt").write_bytes(b"garbage"),
                     "data.train.path: cannot read {dir}/train.pt: not a PyTorch tensor file (corrupt or another "
                     "format)", ()),
    "data-without-inputs": ({}, lambda r: torch.save({"labels": LABELS5}, r.dir / "train.pt"),
                            "data.train: {dir}/train.pt has no 'inputs' entry (has: labels)", ()),
    "data-unknown-format": ({}, lambda r: _set_split(r, "train", format="parquet", path="train.pt"),
                            "{recipe}: data.train.format: unknown format 'parquet' (expected one of: tensors, "
                            "factory, jsonl, csv, imagefolder, torchvision)", ()),
    "labels-nan": ({}, lambda r: torch.save({"inputs": torch.randn(5, 6), "labels": torch.tensor(
                       [0., 1., float("nan"), 1., 0.])}, r.dir / "train.pt"),
                   "data.train: labels must be class indices for cross_entropy, got non-integer values", ()),
    "labels-negative": ({}, lambda r: torch.save({"inputs": torch.randn(5, 6), "labels": torch.tensor([0, 1, -1, 1, 0])},
                                                r.dir / "train.pt"),
                        "data.train: label -1 of example 2 is out of range for a model with 3 outputs", ()),
    "empty-test-split": ({"test": (torch.randn(0, 6), torch.zeros(0, dtype=torch.long))}, lambda r: None,
                         "data.test: no examples", ()),
    "integer-inputs": ({"train": (torch.ones(5, 6, dtype=torch.long), LABELS5)}, lambda r: None,
                       "data.train: the model rejects inputs of shape (2, 6):" + UPSTREAM, ()),
    "layers-empty": ({}, lambda r: r.rewrite(layers=[]),
                     "layers: the model has no trainable parameters to differentiate", ()),
    "loss-unknown": ({}, lambda r: r.rewrite(loss="hinge"),
                     "loss: expected 'pkg.module:callable' or 'file.py:callable', got 'hinge'", ()),
    "loss-file-missing": ({}, lambda r: r.rewrite(loss="nope.py:l"), "loss: file not found: {dir}/nope.py", ()),
    "cache-dir-is-a-file": ({}, lambda r: (r.dir.joinpath("c").write_text("x"), r.rewrite(cache_dir="c")),
                            "cache_dir: cannot create the gradient store in {dir}/c: Not a directory", ()),
    "dtype-unknown": ({}, lambda r: r.rewrite(dtype="float8"),
                      "{recipe}: dtype: expected one of 'float32', 'float64', 'bfloat16', got 'float8'", ()),
    "jsonl-missing": ({}, lambda r: _set_split(r, "train", format="jsonl", path="t.jsonl"),
                      "data.train.path: file not found: {dir}/t.jsonl", ()),
    "csv-without-text": ({}, lambda r: (_write_module(r, "t.csv", "a,b\n1\n"),
                                        _set_split(r, "train", format="csv", path="t.csv")),
                         "data.train.text_column: row 0 of {dir}/t.csv has no 'text' value (columns: a, b)", ()),
    "imagefolder-missing": ({}, lambda r: _set_split(r, "train", format="imagefolder", root="imgs"),
                            "data.train.root: not a folder: {dir}/imgs", ()),
    "test-index-out-of-range": ({}, lambda r: None, "--test-indices: index 99 is out of range for 2 examples",
                                ("--test-indices", "99")),
    "test-indices-unreadable": ({}, lambda r: None, "--test-indices: cannot read 'a:b'; use '0,3,7', '0:100' (end exclusive) "
                                "or a mix ('0:10,15')",
                                ("--test-indices", "a:b")),
}


def _expect(stderr: str, message: str) -> None:
    """One ``error:`` line with ``message`` (only its own part when it ends in :data:`UPSTREAM`)."""
    assert "Traceback" not in stderr
    assert stderr.endswith("\n") and stderr.count("\n") == 1, stderr
    if message.endswith(UPSTREAM):
        assert stderr.startswith(f"error: {message.removesuffix(UPSTREAM)}"), stderr
    else:
        assert stderr == f"error: {message}\n"


@pytest.fixture(scope="module")
def previous_report(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A good ``influence.json`` from an earlier run, which no failing run may replace."""
    run = write_tiny_recipe(tmp_path_factory.mktemp("good"), "mlp", n_train=5, n_test=2)
    assert _score(run).exit_code == 0
    return (run.dir / "report" / "influence.json").read_bytes()


@pytest.mark.parametrize("case", [*CASES, *MORE_CASES])
def test_broken_input_gives_one_line_and_exit_2(tiny_recipe, previous_report, case):
    options, breaks, message, args = CASES[case] + ((),) if case in CASES else MORE_CASES[case]
    run = tiny_recipe("mlp", n_train=5, n_test=2, **options)
    tiny_models = run.data["model"]["factory"].rpartition(":")[0]
    (run.dir / "report").mkdir()
    (run.dir / "report" / "influence.json").write_bytes(previous_report)
    recipe = breaks(run)
    before = _snapshot(run.dir)
    res = _score(run, *args, recipe=recipe if isinstance(recipe, Path) else None)
    assert res.exit_code == 2, res.output
    assert res.stdout == ""
    _expect(res.stderr, message.format(dir=run.dir, recipe=run.recipe_path, tiny_models=tiny_models))
    assert _snapshot(run.dir) == before  # no input and no previous output changed, no stray file


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


def test_ctrl_c_while_starting_up_is_one_line_and_exit_130():
    """A KeyboardInterrupt while the CLI's modules are still being imported: no traceback."""
    code = ("import sys, types\n"
            "class Interrupted(types.ModuleType):\n"
            "    def __getattr__(self, name):\n"
            "        raise KeyboardInterrupt\n"
            "sys.modules['influence_cli.cli'] = Interrupted('influence_cli.cli')\n"
            "from influence_cli.entry import main\n"
            "main()\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (res.returncode, res.stdout, res.stderr) == (130, "", "interrupted\n")
