"""TracIn agrees with captum's TracInCP (an independent implementation) on an MLP with 3 checkpoints.

Captum conventions: ``checkpoints_load_func(model, path)`` loads the weights and returns that
checkpoint's learning rate η_c (its default loader returns 1 unless the file has a
``learning_rate`` key); ``influence((x, y))`` returns the [M, N] matrix Σ_c η_c ⟨g_c(z′), g_c(z)⟩,
and with ``k`` the top-k (indices, scores), largest first for proponents, smallest first for
opponents. ``loss_fn`` with ``reduction="none"`` selects its per-example gradient loop.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from conftest import CAPTUM_RTOL
from influence_cli import load_recipe, score

captum_influence = pytest.importorskip("captum.influence")

K = 4


def test_tracin_matches_captum_tracincp(tiny_recipe):
    run = tiny_recipe("mlp", n_train=12, n_test=3, learning_rates=(0.3, 0.1, 0.02))
    rates = {str(p): lr for p, lr in zip(run.ckpt_paths, run.learning_rates)}

    def load(model: nn.Module, path: str) -> float:
        model.load_state_dict(torch.load(path, weights_only=True))
        return rates[str(path)]

    model = run.factory().double()
    x, y = run.train
    xt, yt = run.test
    tracin = captum_influence.TracInCP(model, TensorDataset(x.double(), y), [str(p) for p in run.ckpt_paths],
                                       checkpoints_load_func=load, loss_fn=nn.CrossEntropyLoss(reduction="none"),
                                       batch_size=5, sample_wise_grads_per_batch=False)
    theirs = tracin.influence((xt.double(), yt))
    ours = score(load_recipe(run.recipe_path), method="tracin", k=K, keep_matrix=True)

    torch.testing.assert_close(ours.passes.matrix, theirs, rtol=CAPTUM_RTOL, atol=1e-9)
    for proponents, (values, indices) in ((True, ours.passes.proponents), (False, ours.passes.opponents)):
        their_idx, their_vals = tracin.influence((xt.double(), yt), k=K, proponents=proponents)
        assert indices.tolist() == their_idx.tolist()
        torch.testing.assert_close(values, their_vals, rtol=CAPTUM_RTOL, atol=1e-9)
