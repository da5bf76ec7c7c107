"""``Session``: every checkpoint loaded with its learning rate and hash, the test split loaded when
asked for, and the model's outputs/predictions equal a plain forward pass of the checkpoint."""

from __future__ import annotations

import hashlib

import pytest
import torch

from conftest import RTOL, TinyRun
from influence_cli import Session, load_recipe
from influence_cli.errors import DataError


def _session(run: TinyRun, **kw: bool) -> Session:
    return Session.from_recipe(load_recipe(run.recipe_path), **kw)


def _forward(run: TinyRun, c: int, inputs: torch.Tensor) -> torch.Tensor:
    """Logits of checkpoint ``c`` by an ordinary float64 forward pass (no functional_call)."""
    model = run.factory()
    model.load_state_dict(run.states[c])
    with torch.no_grad():
        return model.double().eval()(inputs.double())


def test_every_checkpoint_is_loaded_with_its_learning_rate_and_hash(tiny_recipe):
    """η from the recipe (plain) or from the file (`auto`: optimizer state, a learning_rate key)."""
    rates = (0.5, 0.25, 0.03125)
    run = tiny_recipe("mlp", learning_rates=rates, formats=["plain", "training", "lr_key"])
    assert [c["learning_rate"] for c in run.data["checkpoints"]] == [0.5, "auto", "auto"]
    session = _session(run)
    assert session.learning_rates == list(rates)
    assert [c.path for c in session.checkpoints] == run.ckpt_paths
    for info, path, source in zip(session.checkpoints, run.ckpt_paths, ["recipe", "optimizer state", "file"]):
        assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert info.to_dict() == {"path": str(path), "learning_rate": info.learning_rate,
                                  "learning_rate_source": source, "sha256": info.sha256}
    assert len(session.weights) == 3
    for weights, state in zip(session.weights, run.states):
        assert weights.keys() == state.keys()
        assert all(torch.equal(weights[k], v.double()) for k, v in state.items())
    assert session.device == torch.device("cpu") and session.dtype == session.score_dtype == torch.float64


def test_of_returns_the_same_session_or_loads_the_recipe(tiny_recipe):
    run = tiny_recipe("mlp")
    session = _session(run)
    assert Session.of(session) is session
    assert Session.of(session, need_test=True) is session
    loaded = Session.of(load_recipe(run.recipe_path))
    assert isinstance(loaded, Session) and loaded is not session
    assert loaded.learning_rates == session.learning_rates and len(loaded.train) == len(session.train)


def test_the_test_split_is_loaded_when_the_recipe_has_one_or_it_is_needed(tiny_recipe):
    run = tiny_recipe("mlp", n_train=5, n_test=3)
    assert len(_session(run).test) == 3  # in the recipe: loaded even when not needed
    assert torch.equal(_session(run).test.labels, run.test[1])
    run.data["data"].pop("test")
    run.rewrite()
    assert _session(run).test is None
    with pytest.raises(DataError) as info:
        _session(run, need_test=True)
    assert info.value.message == "data.test: this command needs a test split; add it to the recipe"
    with pytest.raises(DataError):
        Session.of(load_recipe(run.recipe_path), need_test=True)


def test_predictions_equal_a_forward_pass_of_the_last_checkpoint(tiny_recipe):
    run = tiny_recipe("mlp", n_train=6, n_test=5, learning_rates=(0.5, 0.25, 0.1))
    session = _session(run)
    indices = torch.tensor([4, 0, 3])  # a subset, in this order
    probs = _forward(run, -1, run.test[0][indices]).softmax(dim=1)
    label, prob = session.predict(session.test, indices)
    assert label.tolist() == probs.argmax(dim=1).tolist()
    torch.testing.assert_close(prob, probs.max(dim=1).values, rtol=RTOL, atol=0)
    assert bool((prob > 1 / 3).all())
    # outputs at any checkpoint: that checkpoint's logits
    for c in range(3):
        torch.testing.assert_close(session.outputs(session.train, torch.arange(6), checkpoint=c),
                                   _forward(run, c, run.train[0]), rtol=RTOL, atol=1e-12)
    assert not torch.allclose(_forward(run, 0, run.test[0]), _forward(run, -1, run.test[0]))


def test_to_device_casts_inputs_to_the_run_dtype_and_class_labels_to_integers(tiny_recipe):
    run = tiny_recipe("mlp", dtype="bfloat16")
    session = _session(run)
    assert session.score_dtype == torch.float32 and session.is_classifier
    x, y = session.to_device(torch.tensor([[0.5, -1.0]]), torch.tensor([2.0, 0.0]))
    assert x.dtype == torch.bfloat16 and x.tolist() == [[0.5, -1.0]]
    assert y.dtype == torch.long and y.tolist() == [2, 0]
    ids = {"input_ids": torch.tensor([[3, 1]]), "mask": torch.tensor([[1.0, 0.0]])}
    moved, _ = session.to_device(ids, torch.tensor([1]))
    assert moved["input_ids"].dtype == torch.long and moved["mask"].dtype == torch.bfloat16
