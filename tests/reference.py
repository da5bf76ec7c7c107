"""Brute-force float64 references for the estimators (shared by every estimator test).

Deliberately naive and independent of the library's fast path: the model is rebuilt, each
checkpoint is loaded with ``load_state_dict``, and each example's gradient is one
``torch.autograd.grad`` call on a batch of one (an explicit Python loop, no ``vmap``, no
``functional_call``). transformers models get their plain 2D ``attention_mask``. Inputs and
labels may also be lists of single examples (batch of one, unpadded: token sequences of their
own lengths), e.g. for a causal LM with :func:`next_token_nll`.

Notation: N train, M test, C checkpoints with learning rates η_c, g_c(z) the per-example loss
gradient at checkpoint c, g_c^l(z) its block for layer l (the module owning the parameters).

- TracIn:  I(z, z′) = Σ_c η_c ⟨g_c(z), g_c(z′)⟩
- GAS:     I(z, z′) = Σ_c η_c cos(g_c(z), g_c(z′))
- GAS-L:   I(z, z′) = Σ_c η_c Σ_l cos(g_c^l(z), g_c^l(z′))
- self-influence: I(z, z) with the same formula.

A cosine with a zero-norm side is 0 (the library's documented convention).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Inputs = torch.Tensor | dict[str, torch.Tensor] | list[torch.Tensor] | list[dict[str, torch.Tensor]]
LayerGrads = dict[str, torch.Tensor]  # owning module name -> flat float64 gradient of one example


def cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y)


def next_token_nll(out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """One sequence's −(1/|S|) Σ_{t∈S} log softmax(out_{t−1})[targets_t], S = {t ≥ 1 : targets_t ≠ −100},
    term by term. ``out`` [1, T, V], ``targets`` [1, T]."""
    logp = torch.log_softmax(out[0], dim=-1)
    terms = [-logp[t - 1, int(targets[0, t])] for t in range(1, targets.shape[1]) if int(targets[0, t]) != -100]
    return torch.stack(terms).mean()


def _logits(out: object) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.logits  # type: ignore[attr-defined]


def _selected(name: str, layer_names: Sequence[str] | None) -> bool:
    """``name`` is kept if it is, or lies inside, one of the exact module/parameter names."""
    return layer_names is None or any(name == m or name.startswith(m + ".") for m in layer_names)


def _state(ckpt: Mapping[str, torch.Tensor] | str | Path) -> Mapping[str, torch.Tensor]:
    return ckpt if isinstance(ckpt, Mapping) else torch.load(ckpt, map_location="cpu", weights_only=True)


def _example(inputs: Inputs, i: int) -> Inputs:
    if isinstance(inputs, list):
        return inputs[i]
    if isinstance(inputs, dict):
        return {k: v[i:i + 1] for k, v in inputs.items()}
    return inputs[i:i + 1]


def reference_grads(model_factory: Callable[[], nn.Module], ckpts: Sequence[Mapping[str, torch.Tensor] | str | Path],
                    inputs: Inputs, labels: torch.Tensor | list[torch.Tensor], layer_names: Sequence[str] | None = None,
                    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cross_entropy,
                    ) -> list[list[LayerGrads]]:
    """``grads[c][i][layer]``: example i's float64 gradient at checkpoint c, one example at a time.

    ``ckpts`` are state dicts or paths of plain state-dict files; ``layer_names`` are exact
    module or parameter names (``None``: every trainable parameter).
    """
    out: list[list[LayerGrads]] = []
    for ckpt in ckpts:
        model = model_factory()
        model.load_state_dict(_state(ckpt))
        model = model.to(torch.float64).eval()
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and _selected(n, layer_names)]
        assert named, f"no parameter selected by {layer_names}"
        per_example = []
        for i in range(len(labels)):
            x = _example(inputs, i)
            if isinstance(x, dict):
                pred = _logits(model(**x))
            else:
                pred = _logits(model(x.to(torch.float64) if x.is_floating_point() else x))
            value = loss(pred, _example(labels, i))
            grads = torch.autograd.grad(value, [p for _, p in named], allow_unused=True)
            layers: LayerGrads = {}
            for (name, p), g in zip(named, grads):
                flat = (torch.zeros_like(p) if g is None else g).detach().reshape(-1)
                owner = name.rpartition(".")[0]  # "" for the root module
                layers[owner] = torch.cat([layers[owner], flat]) if owner in layers else flat
            per_example.append(layers)
        out.append(per_example)
    return out


def _dot(a: LayerGrads, b: LayerGrads) -> float:
    return sum(float(a[k] @ b[k]) for k in a)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    na, nb = float(a.norm()), float(b.norm())
    return 0.0 if na == 0.0 or nb == 0.0 else float(a @ b) / (na * nb)


def pair_score(method: str, a: LayerGrads, b: LayerGrads) -> float:
    """One checkpoint's term for one pair, before η_c."""
    if method == "tracin":
        return _dot(a, b)
    if method == "gas":
        return _cos(torch.cat(list(a.values())), torch.cat(list(b.values())))
    if method == "gas-l":
        return sum(_cos(a[k], b[k]) for k in a)
    raise ValueError(method)


def reference_scores(method: str, train: list[list[LayerGrads]], test: list[list[LayerGrads]],
                     learning_rates: Sequence[float]) -> torch.Tensor:
    """[M, N] matrix I(z_j, z′_i) = Σ_c η_c · pair_score(g_c(z′_i), g_c(z_j))."""
    m, n = len(test[0]), len(train[0])
    scores = torch.zeros(m, n, dtype=torch.float64)
    for c, lr in enumerate(learning_rates):
        for i in range(m):
            for j in range(n):
                scores[i, j] += lr * pair_score(method, test[c][i], train[c][j])
    return scores


def reference_self_influence(method: str, train: list[list[LayerGrads]], learning_rates: Sequence[float]
                             ) -> torch.Tensor:
    """[N] self-influence Σ_c η_c · pair_score(g_c(z), g_c(z))."""
    n = len(train[0])
    return torch.tensor([sum(lr * pair_score(method, train[c][j], train[c][j])
                             for c, lr in enumerate(learning_rates)) for j in range(n)], dtype=torch.float64)
