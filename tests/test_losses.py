"""Per-example losses: one value per example, equal to torch's batch losses example by example."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from influence_cli.losses import BUILTIN_LOSSES, model_outputs, resolve_loss
from influence_cli.recipe import parse_recipe


def test_builtin_losses_per_example():
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 2, 1, 2])
    targets = torch.rand(4, 3, generator=gen, dtype=torch.float64)
    for i in range(4):
        assert BUILTIN_LOSSES["cross_entropy"](out, labels)[i] == F.cross_entropy(out[i:i + 1], labels[i:i + 1])
        torch.testing.assert_close(BUILTIN_LOSSES["mse"](out, targets)[i], F.mse_loss(out[i], targets[i]))
        torch.testing.assert_close(BUILTIN_LOSSES["bce_with_logits"](out, targets)[i],
                                   F.binary_cross_entropy_with_logits(out[i], targets[i]))
    assert BUILTIN_LOSSES["mse"](out[:, :1], targets[:, 0]).shape == (4,)  # [B] targets for [B, 1] outputs


def test_user_loss_from_a_file(tmp_path):
    (tmp_path / "my_loss.py").write_text("def loss(out, y):\n    return (out.sum(1) - y) ** 2\n")
    recipe = parse_recipe({"model": {"factory": "m.py:f"}, "checkpoints": [{"path": "c.pt"}],
                           "data": {"train": {"format": "tensors", "path": "t.pt"}}, "loss": "my_loss.py:loss"},
                          base_dir=tmp_path)
    fn = resolve_loss(recipe)
    assert fn(torch.ones(2, 3), torch.tensor([1.0, 3.0])).tolist() == [4.0, 0.0]


def test_model_outputs():
    t = torch.zeros(2, 3)

    class HF:
        logits = t

    assert model_outputs(t) is t and model_outputs(HF()) is t and model_outputs((t, None)) is t
