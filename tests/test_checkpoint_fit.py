"""Checkpoint fit and share (:mod:`influence_cli.checkpoint_fit`): values against brute force, the
under-trained rule, and the warning and report fields of ``score`` and ``mislabel-detect``."""

from __future__ import annotations

import warnings

import pytest
import torch

from influence_cli import load_recipe, mislabel_detect, score
from influence_cli.checkpoint_fit import CheckpointFit
from conftest import save_checkpoint
from reference import _dot, reference_grads


def test_under_trained_is_below_half_the_last_checkpoints_fit():
    # training fit per checkpoint of the matrix's ResNet-18 (epochs 3…15) and digits MLP (epochs 1…30)
    assert CheckpointFit(torch.tensor([0.255, 0.423, 0.668, 0.760, 0.787]), 600).under_trained() == [0]
    assert CheckpointFit(torch.tensor([0.703, 0.791, 0.870, 0.868, 0.901, 0.911]), 1500).under_trained() == []


def _fitted_state(run) -> dict[str, torch.Tensor]:
    """The tiny MLP trained on the run's training set until it fits every label (full-batch SGD)."""
    torch.manual_seed(0)
    model = run.factory()
    model.load_state_dict(run.states[-1])
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    x, y = run.train[0].float(), run.train[1]
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert (model(x).argmax(1) == y).all()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_score_reports_each_checkpoints_fit_and_share_of_the_sum(tiny_recipe):
    """``influence.json``'s checkpoints: fit_c = share of training labels argmax-predicted at c, share_c =
    η_c Σ_i ‖g_c(z_i)‖² / Σ_c′ (…), both against per-example autograd."""
    run = tiny_recipe("mlp", n_train=12, n_test=2, learning_rates=(0.4, 0.1, 0.05), seed=1)
    result = score(load_recipe(run.recipe_path), method="tracin", k=2)
    entries = result.to_dict()["checkpoints"]
    grads = reference_grads(run.factory, run.states, *run.train)
    mass = torch.tensor([lr * sum(_dot(g, g) for g in per_c) for lr, per_c in zip(run.learning_rates, grads)])
    fits = []
    for state in run.states:
        model = run.factory().double()
        model.load_state_dict(state)
        fits.append(float((model(run.train[0].double()).argmax(1) == run.train[1]).double().mean()))
    assert [e["fit"] for e in entries] == pytest.approx(fits, abs=1e-4)
    assert [e["share"] for e in entries] == pytest.approx((mass / mass.sum()).tolist(), abs=1e-4)
    assert [e["under_trained"] for e in entries] == [f < fits[-1] / 2 for f in fits]


def test_an_under_trained_checkpoint_carrying_most_of_the_sum_is_warned_about(tiny_recipe):
    """A first checkpoint with scaled-up weights (a poor fit, large gradients, the largest η) dominates
    TracIn's sum: one warning naming it, its fit and share; mislabel-detect --method tracin says the
    same; a run of trained checkpoints only warns about nothing."""
    run = tiny_recipe("mlp", n_train=40, n_test=2, learning_rates=(1.0, 0.1), seed=2)
    fitted = _fitted_state(run)
    save_checkpoint(run.ckpt_paths[0], fitted, "plain", 1.0)
    save_checkpoint(run.ckpt_paths[1], fitted, "plain", 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        score(load_recipe(run.recipe_path), method="tracin", k=2)
    save_checkpoint(run.ckpt_paths[0], {k: -3 * v for k, v in fitted.items()}, "plain", 1.0)
    with pytest.warns(UserWarning, match=r"tracin's sum over checkpoints is dominated by under-trained checkpoints: "
                                         r"\S+ \(fits \d+% of the training labels, carries \d+%\)") as caught:
        result = score(load_recipe(run.recipe_path), method="tracin", k=2)
    entry = result.to_dict()["checkpoints"][0]
    assert entry["under_trained"] and entry["share"] > 0.5
    assert len([w for w in caught if "dominated" in str(w.message)]) == 1
    with pytest.warns(UserWarning, match="tracin's self-influence is dominated by under-trained checkpoints"):
        mislabels = mislabel_detect(load_recipe(run.recipe_path), method="tracin", top=3)
    assert mislabels.to_dict()["checkpoints"][0]["share"] == pytest.approx(entry["share"], abs=1e-4)
