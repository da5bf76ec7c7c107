"""Checkpoint formats, learning rates (explicit and ``auto``), prefixes, glob order, fitting to the model."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch

from conftest import random_state, save_checkpoint
from influence_cli import Session, load_recipe
from influence_cli.errors import CheckpointError
from fixtures.tiny_models import build_cnn, build_mlp
from influence_cli.loading.checkpoints import fit_to_model, list_checkpoints, load_checkpoint, needs_pickle
from influence_cli.loading.refs import CheckpointRef
from influence_cli.recipe import parse_recipe


def _recipe(tmp_path, checkpoints):
    return parse_recipe({"model": {"factory": "x.py:f"}, "checkpoints": checkpoints,
                         "data": {"train": {"format": "tensors", "path": "t.pt"}}}, base_dir=tmp_path)


def _load_one(tmp_path, path, learning_rate):
    (ref,) = list_checkpoints(_recipe(tmp_path, [{"path": path.name, "learning_rate": learning_rate}]))
    return load_checkpoint(ref)


def _assert_same(state, expected):
    assert sorted(state) == sorted(expected)
    for k in expected:
        assert torch.equal(state[k], expected[k]), k


@pytest.mark.parametrize("fmt, recipe_lr, want_lr", [
    ("plain", 0.25, 0.25),
    ("training", "auto", 0.03),      # optimizer_state_dict.param_groups[0].lr
    ("lr_key", "auto", 0.03),        # {state_dict, learning_rate}
    ("safetensors", 0.5, 0.5),
    ("module", 0.125, 0.125),        # DataParallel/DDP "module." prefix stripped
    ("training", 0.7, 0.7),          # an explicit learning rate wins over the file's
])
def test_formats_and_learning_rates(tmp_path, fmt, recipe_lr, want_lr):
    state = random_state("cnn", torch.Generator().manual_seed(0))
    path = save_checkpoint(tmp_path / "ck.pt", state, fmt, 0.03)
    ckpt = _load_one(tmp_path, path, recipe_lr)
    assert (ckpt.path, ckpt.learning_rate) == (path, want_lr)
    _assert_same(ckpt.state, state)
    assert ckpt.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("container, want", [
    ({"model": "STATE", "lr": 0.2}, 0.2),
    ({"state_dict": "STATE", "optimizer_states": [{"param_groups": [{"lr": 0.004}, {"lr": 9.0}]}]}, 0.004),
    ({"model_state_dict": "STATE", "optimizer": {"param_groups": [{"lr": 1}]}}, 1.0),
    ({"model_state_dict": "STATE", "learning_rate": 0.5, "optimizer_state_dict": {"param_groups": [{"lr": 9.0}]}},
     0.5),
])
def test_auto_learning_rate_sources(tmp_path, container, want):
    state = random_state("mlp", torch.Generator().manual_seed(1))
    obj = {k: (state if v == "STATE" else v) for k, v in container.items()}
    torch.save(obj, tmp_path / "ck.pt")
    ckpt = _load_one(tmp_path, tmp_path / "ck.pt", "auto")
    assert ckpt.learning_rate == want
    _assert_same(ckpt.state, state)


def test_module_prefix_kept_unless_on_every_key(tmp_path):
    state = {"module.a": torch.ones(1), "b": torch.zeros(1)}
    torch.save(state, tmp_path / "ck.pt")
    assert list(_load_one(tmp_path, tmp_path / "ck.pt", 1.0).state) == ["module.a", "b"]


def test_glob_natural_order_and_learning_rate_list(tmp_path):
    gen = torch.Generator().manual_seed(2)
    states = {n: random_state("mlp", gen) for n in (10, 2, 1)}
    for n, state in states.items():
        save_checkpoint(tmp_path / f"epoch{n}.pt", state, "plain", 0.0)
    refs = list_checkpoints(_recipe(tmp_path, {"glob": "epoch*.pt", "learning_rate": [0.3, 0.2, 0.1]}))
    assert [r.path.name for r in refs] == ["epoch1.pt", "epoch2.pt", "epoch10.pt"]
    assert [r.learning_rate for r in refs] == [0.3, 0.2, 0.1]
    assert [r.key for r in refs] == ["checkpoints.glob[0]", "checkpoints.glob[1]", "checkpoints.glob[2]"]
    single = list_checkpoints(_recipe(tmp_path, {"glob": "epoch*.pt", "learning_rate": 0.5}))
    assert [r.learning_rate for r in single] == [0.5, 0.5, 0.5]
    _assert_same(load_checkpoint(refs[2]).state, states[10])


def test_session_loads_weights_and_buffers_in_recipe_order(tiny_recipe):
    """A CNN's BatchNorm running statistics (buffers) come from the checkpoint, cast to the run's dtype;
    mixed formats in one recipe."""
    run = tiny_recipe("cnn", learning_rates=(0.5, 0.25, 0.03), formats=["safetensors", "module", "training"])
    session = Session.from_recipe(load_recipe(run.recipe_path))
    assert session.learning_rates == [0.5, 0.25, 0.03]
    assert [c.path.name for c in session.checkpoints] == ["epoch1.safetensors", "epoch2.pt", "epoch3.pt"]
    for weights, state in zip(session.weights, run.states):
        assert set(weights) == set(state)
        for k, v in state.items():
            assert weights[k].dtype == (torch.float64 if v.is_floating_point() else v.dtype)
            assert torch.equal(weights[k], v.to(weights[k].dtype)), k
    assert not torch.equal(session.weights[0]["bn.running_mean"], session.weights[1]["bn.running_mean"])


def test_fit_to_model_returns_exactly_the_models_keys(tiny_recipe):
    run = tiny_recipe("mlp")
    ckpt = _load_one(run.dir, run.ckpt_paths[0], 1.0)
    fitted = fit_to_model(run.factory(), ckpt, "here")
    _assert_same(fitted, run.states[0])


@pytest.mark.parametrize("value, message", [
    (-0.1, "the file's learning rate is -0.1; it must be finite and ≥ 0 (set learning_rate in the recipe)"),
    (float("nan"), "the file's learning rate is nan; it must be finite and ≥ 0 (set learning_rate in the recipe)"),
    (True, "learning_rate is auto but the file has no numeric learning_rate/lr key, scheduler or optimizer state; "
           "set learning_rate in the recipe"),
])
def test_a_bad_learning_rate_in_the_file_is_refused(tmp_path, value, message) -> None:
    path = tmp_path / "c.pt"
    torch.save({"model_state_dict": {"w": torch.zeros(2)}, "learning_rate": value}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(CheckpointRef(path, "auto", "checkpoints[0]"))
    assert info.value.message == f"checkpoints[0] ({path}): {message}"


@pytest.mark.parametrize("name, values, count", [
    ("conv.weight", [float("nan")], 1),
    ("fc.bias", [float("inf"), float("-inf"), float("nan")], 3),
    ("bn.running_var", [float("inf")], 1),   # buffers count too
    ("bn.running_mean", [float("nan")] * 2, 2),
])
def test_non_finite_weights_and_buffers_are_refused_naming_file_and_tensor(tmp_path, name, values, count) -> None:
    state = random_state("cnn", torch.Generator().manual_seed(3))
    state[name].view(-1)[:len(values)] = torch.tensor(values, dtype=state[name].dtype)
    path = save_checkpoint(tmp_path / "ck.pt", state, "plain", 0.1)
    with pytest.raises(CheckpointError) as info:
        fit_to_model(build_cnn().double(), _load_one(tmp_path, path, 0.1), f"checkpoints[0] ({path})")
    plural = "s" if count > 1 else ""
    assert info.value.message == f"checkpoints[0] ({path}): {name} has {count} non-finite value{plural} (NaN or inf)"


def test_a_weight_that_overflows_the_models_dtype_is_refused(tmp_path) -> None:
    state = {k: v.double() for k, v in random_state("mlp", torch.Generator().manual_seed(4)).items()}
    state["2.weight"][0, :2] = 1e300  # finite in float64, inf in float32
    path = save_checkpoint(tmp_path / "ck.pt", state, "plain", 0.1)
    ckpt = _load_one(tmp_path, path, 0.1)
    with pytest.raises(CheckpointError) as info:
        fit_to_model(build_mlp().float(), ckpt, "here")
    assert info.value.message == "here: 2.weight has 2 values too large for the model's dtype float32"
    assert set(fit_to_model(build_mlp().double(), ckpt, "here")) == set(state)


class _RunsACommand:
    """What an attacker puts in a checkpoint: unpickling it would run ``touch <marker>``."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("legacy", [False, True])
def test_a_pickle_that_would_run_code_is_refused_as_needing_pickle_and_nothing_runs(tmp_path, legacy) -> None:
    marker = tmp_path / "it-ran"
    state = random_state("mlp", torch.Generator().manual_seed(5))
    torch.save({"model_state_dict": state, "hook": _RunsACommand(marker)}, tmp_path / "ck.pt",
               _use_new_zipfile_serialization=not legacy)
    assert b"system" in (tmp_path / "ck.pt").read_bytes()  # the pickle names os.system (posix.system)
    with pytest.raises(CheckpointError) as info:
        _load_one(tmp_path, tmp_path / "ck.pt", 0.1)
    assert info.value.message == (f"checkpoints[0] ({tmp_path / 'ck.pt'}): the file needs pickle to load, which can "
                                  "run code; set `trust_checkpoints: true` in the recipe if you trust it")
    assert needs_pickle(tmp_path / "ck.pt")
    assert not marker.exists()


@pytest.mark.parametrize("damage", [
    lambda data: data[:len(data) // 2],                       # a truncated archive
    lambda data: b"not a checkpoint",
    # an edited global inside the archive (its CRC no longer matches): damage, not a need for pickle
    lambda data: data.replace(b"collections\nOrderedDict", b"collections\nOrderedDicX", 1),
    lambda data: b'{"a": 1}',
])
def test_a_corrupt_file_is_not_said_to_need_pickle(tmp_path, damage) -> None:
    path = save_checkpoint(tmp_path / "ck.pt", random_state("mlp", torch.Generator().manual_seed(6)), "plain", 0.1)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError) as info:
        _load_one(tmp_path, path, 0.1)
    assert info.value.message == (f"checkpoints[0] ({path}): not a readable PyTorch checkpoint (corrupt or another "
                                  "format)")


def test_an_empty_checkpoint_file(tmp_path) -> None:
    (tmp_path / "ck.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"\): the file is empty \(0 bytes\)$"):
        _load_one(tmp_path, tmp_path / "ck.pt", 0.1)


@pytest.mark.parametrize("layout, given, hint", [
    (["empty/"], "empty", ""),
    (["run/checkpoint-500/model.safetensors"], "run/checkpoint-500",
     "; it looks like a transformers Trainer checkpoint: set `checkpoints: {{hf_trainer_dir: {root}/run}}` to use "
     "every checkpoint-<step>/ of that run"),
    (["run/checkpoint-2/", "run/checkpoint-4/"], "run",
     "; it holds transformers Trainer checkpoints: set `checkpoints: {{hf_trainer_dir: {root}/run}}` to use every "
     "checkpoint-<step>/ in it"),
    (["export/config.json", "export/model.safetensors"], "export",
     "; give the weights file inside it, {root}/export/model.safetensors"),
])
def test_a_folder_given_as_a_checkpoint_is_said_to_be_a_folder(tmp_path, layout, given, hint) -> None:
    for entry in layout:
        target = tmp_path / entry
        if entry.endswith("/"):
            target.mkdir(parents=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"")
    with pytest.raises(CheckpointError) as info:
        list_checkpoints(_recipe(tmp_path, [{"path": given, "learning_rate": 0.1}]))
    assert info.value.message == (f"checkpoints[0] ({tmp_path / given}): is a folder, not a checkpoint file"
                                  + hint.format(root=tmp_path))
