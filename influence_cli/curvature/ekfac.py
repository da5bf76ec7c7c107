"""EK-FAC: the Gauss-Newton curvature G, block-diagonal over layers, for influence functions

    I(z, z′) = g(z′)ᵀ (G + λI)⁻¹ g(z)        (one checkpoint, by default the final one).

Per ``nn.Linear``, ``nn.Conv2d`` or transformers ``Conv1D`` layer (those
:mod:`~influence_cli.gradients.factorized` reads from hooks: the linear layers of BERT- and GPT-2-style
models too; Conv1D stores its weight as [in, out], so its flat gradient is read as Gᵀ) with per-example gradient
G_i = Σ_t e_t ã_tᵀ ∈ ℝ^{q×p} (positions t: sequence positions, or a convolution's output positions
with ã_t the unfolded input patch; ã = [a; 1] with the bias column when the bias is selected,
e = ∂ℓ/∂(pre-activation)):

1. Kronecker factors (first pass over the training set): A = E[Σ_t ã_t ã_tᵀ], S = E[Σ_t e_t e_tᵀ], e at
   labels ŷ *sampled* from the model's predictive distribution (softmax of the logits), as
   Kronfluence does, so that E_ŷ[g gᵀ] is the Gauss-Newton matrix and not the empirical Fisher.
   Each batch's draw is seeded by (``curvature.seed``, pass, the batch's first training index), so
   the fit is the same in one process and split over ``torchrun`` ranks (each pass's sums are added
   across ranks).
2. Eigenbases A = Q_A Λ_A Q_Aᵀ, S = Q_S Λ_S Q_Sᵀ, and the eigenvalue correction (second pass, labels
   drawn afresh, as Kronfluence does) Λ* = E_i[(Q_Sᵀ G_i Q_A)²] ∈ ℝ^{q×p}: the curvature block is
   (Q_S ⊗ Q_A) diag(Λ*) (Q_S ⊗ Q_A)ᵀ, exact whenever the layer's per-example curvature is a
   Kronecker product (e.g. a single Linear layer fed one input).
3. Preconditioned gradient P G = Q_S [(Q_Sᵀ G Q_A) / (Λ* + λ)] Q_Aᵀ.

Every other selected parameter (LayerNorm, BatchNorm, embeddings, grouped convolutions, a layer
whose weight is not selected) falls back to the diagonal of the same sampled-label Gauss-Newton matrix:
P g = g / (E_i[g_i²] + λ). Damping λ, per block: the recipe's ``curvature.damping`` when set, else
0.1 × the mean of the block's eigenvalues Λ* (or of its diagonal), Kronfluence's heuristic.

Cost: two passes over the training set at one checkpoint (a forward/backward, then per-example
gradients); memory p² + q² + pq per factored layer; preconditioning a gradient costs O(pq(p + q)).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from influence_cli.curvature.sums import Reduce, Sums, add, in_process
from influence_cli.errors import GradientError
from influence_cli.gradients.factorized import FactorizedGradients
from influence_cli.gradients.factors import Factors
from influence_cli.gradients.layers import ParamLayout
from influence_cli.gradients.per_example import FlatGrads, GradientBatch, call_model
from influence_cli.loading.examples import Inputs
from influence_cli.losses import LossFn

#: λ = DAMPING_FRACTION × mean eigenvalue of the block when the recipe sets no damping.
DAMPING_FRACTION = 0.1

#: Training batches as (the first training index of the batch, its inputs); the index seeds the batch's
#: sampled labels, so a batch draws the same labels in one process or on any ``torchrun`` rank.
Batches = Callable[[], Iterable[tuple[int, Inputs]]]


@dataclass
class KroneckerBlock:
    """One Linear/Conv2d/Conv1D layer's eigenbases Q_A [p, p], Q_S [q, q], corrected eigenvalues Λ* [q, p]
    and λ; ``transposed``: the weight is stored [in, out] (Conv1D)."""

    columns: tuple[int, int]
    bias: bool
    qa: torch.Tensor
    qs: torch.Tensor
    eigenvalues: torch.Tensor
    damping: float = 0.0
    transposed: bool = False

    def to_matrices(self, g: torch.Tensor) -> torch.Tensor:
        """Flat layer gradients [B, D_l] (weight row-major, then bias) as G = [W | b]: [B, q, p]."""
        q, p = self.qs.shape[0], self.qa.shape[0]
        d = p - self.bias
        flat_w = g[:, :q * d]
        w = flat_w.reshape(len(g), d, q).transpose(1, 2) if self.transposed else flat_w.reshape(len(g), q, d)
        return torch.cat([w, g[:, q * d:, None]], dim=2) if self.bias else w

    def to_flat(self, m: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_matrices`."""
        w = m[:, :, :m.shape[2] - self.bias]
        w = (w.transpose(1, 2) if self.transposed else w).flatten(1)
        return torch.cat([w, m[:, :, -1]], dim=1) if self.bias else w

    def rotate(self, g: torch.Tensor) -> torch.Tensor:
        """Q_Sᵀ G Q_A for every example: [B, q, p]."""
        return self.qs.T @ self.to_matrices(g) @ self.qa

    def precondition(self, g: torch.Tensor) -> torch.Tensor:
        """Q_S [(Q_Sᵀ G Q_A) / (Λ* + λ)] Q_Aᵀ, flat."""
        return self.to_flat(self.qs @ (self.rotate(g) / (self.eigenvalues + self.damping)) @ self.qa.T)


@dataclass
class DiagonalBlock:
    """The fallback: diag(E[g²]) [D_l] of a layer, and λ."""

    columns: tuple[int, int]
    eigenvalues: torch.Tensor
    damping: float = 0.0

    def precondition(self, g: torch.Tensor) -> torch.Tensor:
        """g / (E[g²] + λ)."""
        return g / (self.eigenvalues + self.damping)


@dataclass
class EKFAC:
    """The fitted preconditioner P ≈ (G + λI)⁻¹ over a layout."""

    blocks: list[KroneckerBlock | DiagonalBlock]
    layout: ParamLayout

    def precondition(self, grads: GradientBatch) -> FlatGrads:
        """P g for every example of the batch: [B, D]."""
        g = grads.g  # type: ignore[attr-defined]
        return FlatGrads(torch.cat([b.precondition(g[:, slice(*b.columns)]) for b in self.blocks], dim=1),
                         self.layout)

    def state(self) -> Sums:
        """Every tensor of the fit by name (``l.qa``, ``l.qs``, ``l.bias`` for Kronecker blocks; ``l.eigenvalues``,
        ``l.damping`` for all), for :meth:`from_state`."""
        out: Sums = {}
        for l, b in enumerate(self.blocks):
            out[f"{l}.eigenvalues"], out[f"{l}.damping"] = b.eigenvalues, torch.tensor(b.damping, dtype=torch.float64)
            if isinstance(b, KroneckerBlock):
                out[f"{l}.qa"], out[f"{l}.qs"], out[f"{l}.bias"] = b.qa, b.qs, torch.tensor(b.bias)
                out[f"{l}.transposed"] = torch.tensor(b.transposed)
        return out

    @classmethod
    def from_state(cls, state: Sums, layout: ParamLayout) -> "EKFAC":
        """The fit :meth:`state` described, over ``layout``."""
        blocks: list[KroneckerBlock | DiagonalBlock] = []
        for l, cols in enumerate(layout.slices):
            lam, damping = state[f"{l}.eigenvalues"], float(state[f"{l}.damping"])
            blocks.append(KroneckerBlock(cols, bool(state[f"{l}.bias"]), state[f"{l}.qa"], state[f"{l}.qs"], lam,
                                         damping, bool(state[f"{l}.transposed"]))
                          if f"{l}.qa" in state else DiagonalBlock(cols, lam, damping))
        return cls(blocks, layout)


def label_generator(seed: int, draw: int, start: int) -> torch.Generator:
    """The generator of draw ``draw`` (0: factors, 1: eigenvalue correction) for the batch starting at
    training index ``start``: seeded by a hash of the three."""
    digest = hashlib.sha256(f"ekfac labels {seed} {draw} {start}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def sample_labels(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """ŷ ~ softmax(logits), one class per row (drawn on the CPU, so a seed gives the same draw everywhere)."""
    probs = logits.detach().double().softmax(dim=1).cpu()
    return torch.multinomial(probs, 1, generator=generator).squeeze(1).to(logits.device)


def sampled_labels(model: nn.Module, weights: dict[str, torch.Tensor], x: Inputs, seed: int, draw: int,
                   start: int) -> torch.Tensor:
    """The labels draw ``draw`` samples for the batch ``x`` starting at training index ``start``
    (one no-grad forward at ``weights``)."""
    with torch.no_grad():
        return sample_labels(call_model(model, weights, x), label_generator(seed, draw, start))


def _kronecker_inputs(f: Factors) -> tuple[torch.Tensor, torch.Tensor]:
    """(ã [B, T, p], e [B, T, q]) of a factor block, the bias column appended."""
    a = torch.cat([f.a, torch.ones_like(f.a[..., :1])], dim=2) if f.bias else f.a
    return a, f.e


def _factor_sums(computer: FactorizedGradients, weights: dict[str, torch.Tensor], batches: Batches,
                 seed: int) -> Sums:
    """First pass: ``l.a`` = Σ ã ãᵀ and ``l.s`` = Σ e eᵀ per Linear/Conv2d layer whose weight is selected
    (unnormalised: only their eigenvectors are used), at draw 0 of the sampled labels."""
    sums: Sums = {}
    for start, x in batches():
        y = sampled_labels(computer.model, weights, x, seed, 0, start)
        for l, block in enumerate(computer(weights, x, y).blocks):
            if isinstance(block, Factors) and block.a.shape[2]:
                a, e = (t.flatten(0, 1) for t in _kronecker_inputs(block))
                add(sums, f"{l}.a", a.T @ a)
                add(sums, f"{l}.s", e.T @ e)
    return sums


def _correction_sums(blocks: list[KroneckerBlock | DiagonalBlock], computer: FactorizedGradients,
                     weights: dict[str, torch.Tensor], batches: Batches, seed: int) -> Sums:
    """Second pass: ``l`` = Σ_i (Q_Sᵀ G_i Q_A)² (or Σ_i g_i² for a diagonal block) at draw 1 of the
    sampled labels, and ``n``, the examples counted."""
    sums: Sums = {"n": torch.zeros((), dtype=torch.float64)}
    for start, x in batches():
        y = sampled_labels(computer.model, weights, x, seed, 1, start)
        for l, (b, g) in enumerate(zip(blocks, computer(weights, x, y).blocks)):
            add(sums, str(l), _squares(b, g))
        sums["n"] = sums["n"] + len(y)
    return sums


def _squares(block: KroneckerBlock | DiagonalBlock, g: Factors | torch.Tensor) -> torch.Tensor:
    """Σ_i (Q_Sᵀ G_i Q_A)² from factors, or Σ_i g_i² of a dense block."""
    if isinstance(block, DiagonalBlock):
        dense = g.materialize() if isinstance(g, Factors) else g
        return dense.pow(2).sum(0)
    a, e = _kronecker_inputs(g)  # type: ignore[arg-type]
    return torch.einsum("btq,btp->bqp", e @ block.qs, a @ block.qa).pow(2).sum(0)


def _damped(block: KroneckerBlock | DiagonalBlock, damping: float | None) -> KroneckerBlock | DiagonalBlock:
    """The block with its λ: ``damping`` or DAMPING_FRACTION × mean eigenvalue (> 0)."""
    mean = float(block.eigenvalues.mean())
    block.damping = damping if damping is not None else DAMPING_FRACTION * mean
    if block.damping <= 0:
        block.damping = torch.finfo(block.eigenvalues.dtype).tiny
    return block


def fit_ekfac(model: nn.Module, weights: dict[str, torch.Tensor], layout: ParamLayout, loss_fn: LossFn,
              batches: Batches, *, damping: float | None = None, seed: int = 0, reduce: Reduce = in_process) -> EKFAC:
    """Fit EK-FAC at ``weights`` over the training batches ``batches()`` yields (called twice; one extra
    forward per batch draws its labels): factors A, S and their eigenbases, then Λ* from the per-example
    gradients (factorised hooks, see :mod:`~influence_cli.gradients.factorized`) at labels drawn afresh
    (:func:`sampled_labels`, draws 0 and 1, seeded by ``seed`` and each batch's first index). ``reduce``
    sums each pass over the processes that share the training set (``torchrun``)."""
    computer = FactorizedGradients(model, layout, loss_fn)
    computer.keep_factors = True
    bias = {f.index: f.bias for f in computer.factor_layers}
    transposed = {f.index: f.kind == "conv1d" for f in computer.factor_layers}
    sums = reduce(lambda: _factor_sums(computer, weights, batches, seed))
    if not all(bool(torch.isfinite(t).all()) for t in sums.values()):
        raise GradientError("ekfac: the curvature factors are not finite (NaN or inf activations or losses)")
    blocks: list[KroneckerBlock | DiagonalBlock] = []
    for l, cols in enumerate(layout.slices):
        if f"{l}.a" in sums:
            qa, qs = (torch.linalg.eigh(m.double()).eigenvectors.to(m.dtype) for m in (sums[f"{l}.a"], sums[f"{l}.s"]))
            blocks.append(KroneckerBlock(cols, bias[l], qa, qs, qa.new_zeros(qs.shape[0], qa.shape[0]),
                                         transposed=transposed[l]))
        else:
            blocks.append(DiagonalBlock(cols, torch.zeros(cols[1] - cols[0])))  # dtype, device: from the gradients
    corrections = reduce(lambda: _correction_sums(blocks, computer, weights, batches, seed))
    n = max(float(corrections["n"]), 1.0)
    for l, b in enumerate(blocks):
        if str(l) in corrections:
            b.eigenvalues = corrections[str(l)] / n
    return EKFAC([_damped(b, damping) for b in blocks], layout)
