"""Seeded random projection of per-example gradients, one layer at a time (``projection: {dim, seed}``).

Each layer's block g^l ∈ ℝ^{D_l} becomes P_l g^l ∈ ℝ^{K} with E[P_lᵀP_l] = I, so
E⟨P_l g, P_l g′⟩ = ⟨g, g′⟩ and every estimator is computed on the projected blocks (GAS / GAS-L
normalise the projected vectors). A layer with D_l ≤ K is kept exact (P_l = I). Every other layer
gets a **CountSketch** (sparse JL, Clarkson & Woodruff 2013) of its flat gradient to exactly K
numbers: coordinate j goes to bucket h(j) ∈ [0, K) with sign s(j) ∈ {±1}, out[h(j)] += s(j)·g[j].
Its inner-product variance, (‖g‖²‖g′‖² + ⟨g, g′⟩² − 2 Σ_j g_j² g′_j²) / K, is never above that of
a dense Gaussian JL map with K rows, so per layer it is as accurate as dense JL at equal size.
How the sketch is computed depends on the layer's shape:

- **dense blocks** (norm layers, ``torch.func`` layers): the CountSketch applied to the block.
- **factorised layers** (Linear/Conv2d, G = Σ_t e_t ã_tᵀ ∈ ℝ^{q×p}, T positions): one of two ways,
  whichever costs less per example (multiply-adds; the rule of :func:`materialise_cheaper`):

  * *materialise* — form G in bounded example chunks and CountSketch it (hash h, sign s drawn
    over the D_l parameters in parameter order): cost T·p·q/64 + p·q, in units of one scattered
    add (forming G is a batched matrix product, measured ≈ 64× faster per multiply-add);
  * *TensorSketch* (Pham & Pagh 2013) — the CountSketch of vec(G) with the hash
    h(i, j) = (h_e(i) + h_a(j)) mod K and sign s_e(i)·s_a(j) (i: output row, j: column of ã, the
    last column being the bias), computed from the factors without forming G:
    TS(G) = IFFT(Σ_t FFT(C_e e_t) ⊙ FFT(C_a ã_t)), C_e, C_a CountSketches to K (circular
    convolution of the two sketches). Cost ≈ T·(p + q) + (2T + 1)·K·log₂K / 16 (an FFT's
    K·log₂K butterflies measured ≈ 16× cheaper each than a scattered add).

  Materialise iff **p·q·(T/64 + 1) ≤ T·(p + q) + (2T + 1)·K·log₂K / 16**: in practice
  convolutions with many positions and a small p·q (the benchmark CNN's 73 × 16 conv at T = 64:
  p·q·2 ≤ 64·89 + 129·K·log₂K/16 for every K) and tiny layers; Linear layers on flat inputs
  (T = 1: p·q ≲ p + q + 3K·log₂K/16, i.e. hardly ever) and big or long-sequence layers use the
  TensorSketch (a 2305 × 256 conv at T = 196, K = 1024: 2.4M vs 0.75M units; measured 2.3×). Both give the same K numbers
  per layer and measured the same accuracy (``benchmarks/RESULTS.md``, projection section):
  within 0.02 of a dense Gaussian JL of the whole flat gradient at equal total size. The earlier
  Kronecker map P_e ⊗ P_a (k_e·k_a ≤ K) was cheaper still but lost 0.02–0.09 Spearman there
  (variance ~ 1/√K instead of 1/K for rank-one gradients), and an SJLT with s = 2 or 4 nonzeros
  per column measured no better than s = 1 (its variance for inner products is the same) at 2–4×
  the cost; neither is used.

Intermediates are bounded: at most ``_CHUNK_ELEMENTS`` numbers of G (materialise) or of the
[b, T, K] sketches (TensorSketch, chunked over examples and positions) exist at a time.
The random draws are seeded by (``seed``, layer index) on the CPU, so a projection is the same
on every device, for the query and the training side, at every checkpoint and for any batch
split. :data:`influence_cli.recipe.schema.SKETCH_VERSION` names this family of maps; the gradient store's
key and a results folder's fingerprint include it, so gradients projected by an earlier sketch are
never reused. The accuracy against exact scores is measured in ``benchmarks/bench_projection.py``
and against dense JL in ``benchmarks/bench_projection_dense.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from influence_cli.gradients.factorized import FactorizedGradients
from influence_cli.gradients.factors import Factors, LayerGrads, to_matrix
from influence_cli.gradients.layers import ParamLayout
from influence_cli.gradients.per_example import FlatGrads, Inputs, PerExampleGradients

_CHUNK_ELEMENTS = 1 << 22  # bound on the materialised G / the [b, T, K] sketches of one chunk


def _generator(seed: int, layer: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + layer)


def _hash(n: int, dim: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(buckets [n] int64 in [0, dim), signs [n] float64 ±1), drawn in that order."""
    buckets = torch.randint(0, dim, (n,), generator=gen)
    return buckets, torch.randint(0, 2, (n,), generator=gen).to(torch.float64) * 2 - 1


def materialise_cheaper(positions: int, p: int, q: int, dim: int) -> bool:
    """The rule for a factorised layer: p·q·(T/64 + 1) ≤ T·(p + q) + (2T + 1)·K·log₂K / 16, i.e.
    forming G and CountSketching it costs no more than the TensorSketch of its factors, in units
    of one scattered add (measured on CPU: a multiply-add of the batched product forming G ≈ 1/64,
    one K·log₂K unit of an FFT ≈ 1/16)."""
    t = max(1, positions)
    return p * q * (t / 64 + 1) <= t * (p + q) + (2 * t + 1) * dim * math.log2(max(2, dim)) / 16


@dataclass
class _CountSketch:
    """Sparse JL: out[h(j)] += s(j) · g[j]; a :class:`Factors` block is materialised in chunks."""

    buckets: torch.Tensor  # [D_l] int64
    signs: torch.Tensor    # [D_l]
    dim: int

    def __call__(self, block: Factors | torch.Tensor) -> torch.Tensor:
        if isinstance(block, Factors):
            step = max(1, _CHUNK_ELEMENTS // max(1, len(self.buckets)))
            parts = [self(replace(block, a=block.a[i:i + step], e=block.e[i:i + step]).materialize())
                     for i in range(0, len(block.a), step)]
            return torch.cat(parts) if parts else block.e.new_zeros(0, self.dim)
        out = block.new_zeros(block.shape[0], self.dim)
        return out.index_add_(1, self.buckets.to(block.device), block * self.signs.to(block))


@dataclass
class _TensorSketch:
    """CountSketch of vec(G), G = Σ_t e_t ã_tᵀ, with h(i, j) = (h_e(i) + h_a(j)) mod K and sign
    s_e(i)·s_a(j), from the factors: IFFT(Σ_t FFT(C_e e_t) ⊙ FFT(C_a ã_t))."""

    ha: torch.Tensor  # [p] buckets of ã's entries (the last one the bias's constant 1)
    sa: torch.Tensor  # [p]
    he: torch.Tensor  # [q]
    se: torch.Tensor  # [q]
    dim: int

    def _sketch(self, x: torch.Tensor, buckets: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
        """[b, T, n] → [b, T, K]: the CountSketch of every position."""
        out = x.new_zeros(*x.shape[:2], self.dim)
        return out.index_add_(2, buckets.to(x.device), x * signs.to(x))

    def __call__(self, f: Factors) -> torch.Tensor:
        b_all, t_all = f.e.shape[:2]
        dtype = f.e.dtype if f.e.dtype in (torch.float32, torch.float64) else torch.float32  # FFT precision
        k = self.dim
        per_example = max(1, t_all) * k
        step_b = max(1, _CHUNK_ELEMENTS // per_example)
        step_t = max(1, t_all if per_example <= _CHUNK_ELEMENTS else _CHUNK_ELEMENTS // k)
        d = f.a.shape[2]
        rows = []
        for i in range(0, b_all, step_b):
            spec = None
            for t in range(0, t_all, step_t):
                a = f.a[i:i + step_b, t:t + step_t].to(dtype)
                e = f.e[i:i + step_b, t:t + step_t].to(dtype)
                ca = self._sketch(a, self.ha[:d], self.sa[:d])
                if f.bias:  # ã's constant 1
                    ca[:, :, int(self.ha[d])] += float(self.sa[d])
                ce = self._sketch(e, self.he, self.se)
                part = (torch.fft.rfft(ca, dim=2) * torch.fft.rfft(ce, dim=2)).sum(1)
                spec = part if spec is None else spec + part
            if spec is None:  # no positions: G = 0
                spec = torch.zeros(min(step_b, b_all - i), k // 2 + 1, dtype=torch.complex128 if dtype ==
                                   torch.float64 else torch.complex64, device=f.e.device)
            rows.append(torch.fft.irfft(spec, n=k, dim=1))
        out = torch.cat(rows) if rows else f.e.new_zeros(0, k, dtype=dtype)
        return out.to(f.e.dtype)


class ProjectedGradients:
    """Wraps a gradient computer; returns the projected gradients as :class:`FlatGrads` [B, Σ_l k_l]."""

    def __init__(self, inner: FactorizedGradients | PerExampleGradients, dim: int, seed: int) -> None:
        if isinstance(inner, FactorizedGradients):
            inner.keep_factors = True  # the sketches work from the factors (materialising in bounded chunks)
        self.inner = inner
        self.dim = dim
        self.seed = seed
        self._maps: dict[int, _TensorSketch | _CountSketch | None] = {}
        self.layout: ParamLayout | None = None

    def _map(self, l: int, block: Factors | torch.Tensor) -> _TensorSketch | _CountSketch | None:
        """Layer l's projection, drawn on first use (``None``: the layer is small enough to stay exact).
        The choice depends only on the layer's shape (D_l, and p, q, T for factors), so both sides
        and every checkpoint get the same map."""
        if l in self._maps:
            return self._maps[l]
        gen = _generator(self.seed, l)
        proj: _TensorSketch | _CountSketch | None
        if isinstance(block, Factors):
            p, q = block.p, block.e.shape[2]
            if p * q <= self.dim:
                proj = None
            elif materialise_cheaper(block.positions, p, q, self.dim):
                proj = _CountSketch(*_hash(block.a.shape[2] * q + q * int(block.bias), self.dim, gen), self.dim)
            else:
                proj = _TensorSketch(*_hash(p, self.dim, gen), *_hash(q, self.dim, gen), self.dim)
        else:
            d = block.shape[1]
            proj = None if d <= self.dim else _CountSketch(*_hash(d, self.dim, gen), self.dim)
        self._maps[l] = proj
        return proj

    def path(self, l: int) -> str:
        """Layer l's projection, once drawn (after a call): ``TensorSketch`` (from the factors),
        ``CountSketch`` (a dense block, or a factorised layer's materialised G) or ``exact``
        (D_l ≤ K: kept as it is)."""
        proj = self._maps[l]
        return "exact" if proj is None else "TensorSketch" if isinstance(proj, _TensorSketch) else "CountSketch"

    def project(self, grads: LayerGrads | FlatGrads) -> FlatGrads:
        """P_l g^l for every layer, concatenated: [B, Σ_l k_l]."""
        if isinstance(grads, FlatGrads):
            blocks: list[Factors | torch.Tensor] = [grads.g[:, a:b] for a, b in grads.layout.slices]
            layer_names = grads.layout.layer_names
        else:
            blocks, layer_names = grads.blocks, grads.layout.layer_names
        parts = []
        for l, block in enumerate(blocks):
            proj = self._map(l, block)
            parts.append(to_matrix(block) if proj is None else proj(block))  # type: ignore[arg-type]
        if self.layout is None:
            sizes = tuple(p.shape[1] for p in parts)
            bounds = [0, *torch.tensor(sizes).cumsum(0).tolist()]
            self.layout = ParamLayout(tuple(f"{n}.projected" for n in layer_names), sizes, tuple(layer_names),
                                      tuple(zip(bounds[:-1], bounds[1:])))
        return FlatGrads(torch.cat(parts, dim=1), self.layout)

    def __call__(self, weights: dict[str, torch.Tensor], inputs: Inputs, labels: torch.Tensor) -> FlatGrads:
        return self.project(self.inner(weights, inputs, labels))
