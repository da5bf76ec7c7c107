"""Per-example losses ℓ(f(x), y): built-in names or a user callable from the recipe.

Every loss returns one value per example (shape [B]); multi-dimensional outputs are averaged
over their non-batch dimensions, as ``reduction="mean"`` would per example.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from influence_cli.loading.causal_lm import IGNORED_TOKEN
from influence_cli.loading.imports import import_callable
from influence_cli.recipe import Recipe

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels, reduction="none")


def _mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    diff = outputs - targets.reshape(outputs.shape).to(outputs.dtype)
    return diff.pow(2).flatten(1).mean(1)


def _bce_with_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    loss = F.binary_cross_entropy_with_logits(logits, targets.reshape(logits.shape).to(logits.dtype),
                                              reduction="none")
    return loss.flatten(1).mean(1)


def _token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token negative log-likelihood of a causal LM over the counted tokens S:

        ℓ = −(1/|S|) Σ_{t∈S} log softmax(logits_{t−1})[x_t],   S = {t ≥ 1 : targets_t ≠ −100}

    ``logits`` [B, T, V]; ``targets`` [B, T′ ≥ T] are the input ids with ignored tokens set to
    −100 (columns past T, batch padding, are all ignored and dropped). No counted token: ℓ = 0.
    """
    targets = targets[:, 1:logits.shape[1]]
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=IGNORED_TOKEN, reduction="none")
    return nll.sum(1) / (targets != IGNORED_TOKEN).sum(1).clamp(min=1)


BUILTIN_LOSSES: dict[str, LossFn] = {
    "cross_entropy": _cross_entropy,
    "mse": _mse,
    "bce_with_logits": _bce_with_logits,
    "token_nll": _token_nll,
}

CLASSIFICATION_LOSSES = ("cross_entropy",)


def resolve_loss(recipe: Recipe) -> LossFn:
    """The recipe's ``loss``: a built-in name or ``file.py:callable`` returning per-example losses."""
    if recipe.loss in BUILTIN_LOSSES:
        return BUILTIN_LOSSES[recipe.loss]
    return import_callable(recipe.loss, base_dir=recipe.base_dir, key="loss")


def model_outputs(out: Any) -> torch.Tensor:
    """The prediction tensor of a model's output: itself, ``.logits`` (transformers), or ``[0]``."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"cannot find the prediction tensor in a model output of type {type(out).__name__}")
