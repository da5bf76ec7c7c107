"""Influence estimators: the formulas, once.

Notation: N training examples z, M query (test) examples z′, C checkpoints with learning
rates η_c, L layers. g_c(z) ∈ ℝ^D is the gradient of the per-example loss at checkpoint c,
restricted to the selected layers; g_c^l(z) is its layer-l block (a layer is the module that owns
the parameters, e.g. ``fc1`` = ``fc1.weight`` ⊕ ``fc1.bias``).

Every estimator has the form

    I(z, z′) = Σ_c η_c Σ_l w_l(g_c(z)) · w_l(g_c(z′)) · ⟨g_c^l(z), g_c^l(z′)⟩

with a per-example, per-layer weight w:

============  ===========================  ===============================================
method        w_l(g)                       meaning
============  ===========================  ===============================================
``tracin``    1                            Σ_c η_c ⟨g, g′⟩ (Pruthi et al. 2020, TracInCP)
``gas``       1 / ‖g‖                      Σ_c η_c cos(g, g′) (Hammoudeh & Lowd 2022)
``gas-l``     1 / ‖g^l‖                    Σ_c η_c Σ_l cos(g^l, g′^l) (same paper, layerwise)
============  ===========================  ===============================================

Positive scores are *proponents* (a gradient step on z lowered the loss on z′), negative
scores *opponents*. Self-influence is I(z, z) = Σ_c η_c Σ_l w_l² ‖g_c^l(z)‖².

The influence functions ``ekfac`` and ``arnoldi`` are not of this form: g′ᵀ(G + λI)⁻¹g at the final
checkpoint, see :mod:`influence_cli.curvature`.

Zero gradients: a zero-norm gradient (or layer block) gets weight 0, so its cosine is defined
as 0 rather than NaN; it neither promotes nor opposes anything.
"""

from __future__ import annotations

import torch

from influence_cli.errors import ParameterError
from influence_cli.methods import CURVATURE_METHODS, Method, choose


def layer_weights(sq_norms: torch.Tensor, method: Method | str) -> torch.Tensor:
    """w_l for every example and layer from the layer squared norms ‖g^l‖² ([B, L] → [B, L])."""
    method = choose(Method, method, "method")
    if method in CURVATURE_METHODS:
        raise ParameterError("method", f"{method} preconditions gradients (influence_cli.curvature), no layer weights")
    if method is Method.TRACIN:
        return torch.ones_like(sq_norms)
    norms = sq_norms.sum(1, keepdim=True).expand_as(sq_norms) if method is Method.GAS else sq_norms
    norms = norms.sqrt()
    return torch.where(norms > 0, 1.0 / norms.clamp_min(torch.finfo(norms.dtype).tiny), torch.zeros_like(norms))



def self_influence_term(sq_norms: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """One checkpoint's Σ_l w_l² ‖g^l‖² for each example ([B, L] → [B]), before η_c, from the
    layer squared norms and the weights :func:`layer_weights` gave them."""
    return (weights.pow(2) * sq_norms).sum(1)
