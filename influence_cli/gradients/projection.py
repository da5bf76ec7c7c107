"""Seeded random projection of per-example gradients, one layer at a time (``projection: {dim, seed}``).

Each layer's block g^l ∈ ℝ^{D_l} becomes P_l g^l ∈ ℝ^{k_l} with E[P_lᵀP_l] = I, so
E⟨P_l g, P_l g′⟩ = ⟨g, g′⟩ and every estimator is computed on the projected blocks (GAS / GAS-L
normalise the projected vectors). A layer with D_l ≤ K is kept exact (P_l = I). Otherwise:

- **factorised layers** (Linear/Conv2d, G = Σ_t e_t ã_tᵀ): a Kronecker projection
  P_l = P_e ⊗ P_a with Gaussian P_a ∈ ℝ^{p×k_a}, P_e ∈ ℝ^{q×k_e} (entries N(0, 1/k)), giving
  Σ_t (P_eᵀ e_t)(P_aᵀ ã_t)ᵀ ∈ ℝ^{k_e×k_a}, k_e·k_a ≤ K; it costs T·(p·k_a + q·k_e) per example
  and never forms G. A side of size ≤ its share is left unprojected (P = I): for a 10-class head
  only the activations are projected, k_a = K / 10.
- **other layers**: a CountSketch (sparse JL, Clarkson & Woodruff 2013): coordinate j goes to
  bucket h(j) ∈ [0, K) with sign s(j) ∈ {±1}; O(D_l) memory and work, no dense D_l × K matrix.

The random draws are seeded by (``seed``, layer index) on the CPU, so a projection is the same
on every device, for the query and the training side, and at every checkpoint. The accuracy
against exact scores is measured in ``benchmarks/bench_projection.py`` (see the README).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from influence_cli.gradients.factorized import FactorizedGradients
from influence_cli.gradients.factors import Factors, LayerGrads, to_matrix
from influence_cli.gradients.layers import ParamLayout
from influence_cli.gradients.per_example import FlatGrads, Inputs, PerExampleGradients


def _generator(seed: int, layer: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + layer)


def _tilde(f: Factors) -> torch.Tensor:
    """ã = [a; 1] explicitly (only for a side small enough to stay unprojected)."""
    return torch.cat([f.a, f.a.new_ones(*f.a.shape[:2], 1)], dim=2) if f.bias else f.a


@dataclass
class _Kronecker:
    """P_e ⊗ P_a for a factorised layer (``None``: that side is not projected)."""

    pa: torch.Tensor | None  # [p, k_a]
    pe: torch.Tensor | None  # [q, k_e]

    def __call__(self, f: Factors) -> torch.Tensor:
        a = _tilde(f) if self.pa is None else f.a_times(self.pa.to(f.a))
        e = f.e if self.pe is None else f.e @ self.pe.to(f.e)
        return torch.einsum("btk,btj->bkj", e, a).flatten(1)


@dataclass
class _CountSketch:
    """Sparse JL: out[h(j)] += s(j) · g[j]."""

    buckets: torch.Tensor  # [D_l] int64
    signs: torch.Tensor    # [D_l]
    dim: int

    def __call__(self, g: torch.Tensor) -> torch.Tensor:
        out = g.new_zeros(g.shape[0], self.dim)
        return out.index_add_(1, self.buckets.to(g.device), g * self.signs.to(g))


def _gaussian(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(rows, cols, generator=gen, dtype=torch.float64) / math.sqrt(cols)


def _shares(p: int, q: int, k: int) -> tuple[int, int]:
    """(k_a, k_e) with k_a·k_e ≤ k: the smaller side kept whole when it fits, else √k each."""
    if q * q <= k:
        return min(p, k // q), q
    if p * p <= k:
        return p, min(q, k // p)
    root = math.isqrt(k)
    return root, k // root


class ProjectedGradients:
    """Wraps a gradient computer; returns the projected gradients as :class:`FlatGrads` [B, Σ_l k_l]."""

    def __init__(self, inner: FactorizedGradients | PerExampleGradients, dim: int, seed: int) -> None:
        if isinstance(inner, FactorizedGradients):
            inner.keep_factors = True  # P_e ⊗ P_a from the factors is cheaper than forming G
        self.inner = inner
        self.dim = dim
        self.seed = seed
        self._maps: dict[int, _Kronecker | _CountSketch | None] = {}
        self.layout: ParamLayout | None = None

    def _map(self, l: int, block: Factors | torch.Tensor) -> _Kronecker | _CountSketch | None:
        """Layer l's projection, drawn on first use (``None``: the layer is small enough to stay exact)."""
        if l in self._maps:
            return self._maps[l]
        gen = _generator(self.seed, l)
        proj: _Kronecker | _CountSketch | None
        if isinstance(block, Factors):
            p, q = block.p, block.e.shape[2]
            if p * q <= self.dim:
                proj = None
            else:
                ka, ke = _shares(p, q, self.dim)
                proj = _Kronecker(None if ka >= p else _gaussian(p, ka, gen),
                                  None if ke >= q else _gaussian(q, ke, gen))
        else:
            d = block.shape[1]
            proj = None if d <= self.dim else _CountSketch(
                torch.randint(0, self.dim, (d,), generator=gen),
                torch.randint(0, 2, (d,), generator=gen).to(torch.float64) * 2 - 1, self.dim)
        self._maps[l] = proj
        return proj

    def path(self, l: int) -> str:
        """Layer l's projection, once drawn (after a call): ``Kronecker`` (factors), ``CountSketch`` (a dense
        block) or ``exact`` (D_l ≤ K: kept as it is)."""
        proj = self._maps[l]
        return "exact" if proj is None else "Kronecker" if isinstance(proj, _Kronecker) else "CountSketch"

    def project(self, grads: LayerGrads | FlatGrads) -> FlatGrads:
        """P_l g^l for every layer, concatenated: [B, Σ_l k_l]."""
        if isinstance(grads, FlatGrads):
            blocks: list[Factors | torch.Tensor] = [grads.g[:, a:b] for a, b in grads.layout.slices]
            layer_names = grads.layout.layer_names
        else:
            blocks, layer_names = grads.blocks, grads.layout.layer_names
        parts = []
        for l, block in enumerate(blocks):
            proj = self._map(l, block)  # Kronecker for factors, CountSketch for dense blocks
            parts.append(to_matrix(block) if proj is None else proj(block))  # type: ignore[arg-type]
        if self.layout is None:
            sizes = tuple(p.shape[1] for p in parts)
            bounds = [0, *torch.tensor(sizes).cumsum(0).tolist()]
            self.layout = ParamLayout(tuple(f"{n}.projected" for n in layer_names), sizes, tuple(layer_names),
                                      tuple(zip(bounds[:-1], bounds[1:])))
        return FlatGrads(torch.cat(parts, dim=1), self.layout)

    def __call__(self, weights: dict[str, torch.Tensor], inputs: Inputs, labels: torch.Tensor) -> FlatGrads:
        return self.project(self.inner(weights, inputs, labels))

