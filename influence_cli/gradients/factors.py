"""Per-example gradients held per layer: a factor pair (ã, e) or a dense [B, D_l] block.

:class:`Factors` is one Linear/Conv2d layer's gradients G_i = Σ_t e_{i,t} ã_{i,t}ᵀ of a batch,
kept as the factors (never forming G unless asked); :class:`LayerGrads` holds one block per layer
and supports the operations of :class:`~influence_cli.gradients.per_example.FlatGrads`:
``layer_sq_norms``, ``scaled``, ``dot``, ``cat``. Products use
⟨G, G′⟩ = Σ_{t,s} ⟨ã_t, ã′_s⟩ ⟨e_t, e′_s⟩ (see :mod:`influence_cli.gradients.factorized`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Union

import torch
import torch.nn.functional as F

from influence_cli.gradients.layers import ParamLayout
from influence_cli.gradients.per_example import FlatGrads, sq_norms

_CHUNK_ELEMENTS = 1 << 24  # bound on the [b, B′, T, T′] intermediates of sequence dot products


@dataclass
class Factors:
    """One layer's gradient as factors: G_i = Σ_t e[i,t] ã[i,t]ᵀ with ã = [a; 1] (the 1 only when
    ``bias``), a [B, T, d] (d = 0 when the weight is not selected) and e [B, T, q].

    The bias's constant 1 is never stored: ⟨ã, ã′⟩ = ⟨a, a′⟩ + 1. ``transposed``: the layer stores its
    weight as [in, out] (transformers' ``Conv1D``, y = x W + b), so its flat parameter order is that
    of Gᵀ; only :meth:`materialize` depends on it (inner products do not).
    """

    a: torch.Tensor
    e: torch.Tensor
    bias: bool
    transposed: bool = False

    @property
    def positions(self) -> int:
        return self.a.shape[1]

    @property
    def p(self) -> int:
        return self.a.shape[2] + int(self.bias)

    @property
    def pq(self) -> int:
        return self.p * self.e.shape[2]

    def factored_cheaper(self, t: int, s: int) -> bool:
        """Σ_{t,s} on factors, T·T′·(p+q) per pair, beats forming G (p·q)."""
        return t * s * (self.p + self.e.shape[2]) < self.pq

    def materialize(self) -> torch.Tensor:
        """The flat gradient [B, D_l] in parameter order: weight Σ_t e_t a_tᵀ flattened (its transpose when
        ``transposed``), then bias Σ_t e_t."""
        parts = []
        if self.a.shape[2]:
            spec = "btq,btd->bdq" if self.transposed else "btq,btd->bqd"
            parts.append(torch.einsum(spec, self.e, self.a).flatten(1))
        if self.bias:
            parts.append(self.e.sum(1))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def a_times(self, matrix: torch.Tensor) -> torch.Tensor:
        """ã @ matrix ([B, T, p] @ [p, k]) without forming ã."""
        if not self.bias:
            return self.a @ matrix
        return self.a @ matrix[:-1] + matrix[-1]

    def sq_norms(self) -> torch.Tensor:
        """‖G_i‖² = Σ_{t,s} ⟨ã_t, ã_s⟩⟨e_t, e_s⟩ per example: [B]."""
        if self.positions == 1:
            return (self.a[:, 0].pow(2).sum(1) + float(self.bias)) * self.e[:, 0].pow(2).sum(1)
        if not self.factored_cheaper(self.positions, self.positions):
            return sq_norms(self.materialize())
        ka = torch.einsum("btd,bsd->bts", self.a, self.a) + float(self.bias)
        return (ka * torch.einsum("btq,bsq->bts", self.e, self.e)).sum((1, 2))

    def dot(self, other: "Factors") -> torch.Tensor:
        """⟨G_i, G′_j⟩ = Σ_{t,s} ⟨ã_it, ã′_js⟩⟨e_it, e′_js⟩ for all pairs: [B, B′]."""
        t, s = self.positions, other.positions
        if t == 1 and s == 1:
            return (self.a[:, 0] @ other.a[:, 0].T + float(self.bias)) * (self.e[:, 0] @ other.e[:, 0].T)
        if not self.factored_cheaper(t, s):
            return self.materialize() @ other.materialize().T
        step = max(1, _CHUNK_ELEMENTS // max(1, len(other.a) * t * s))
        rows = []
        for i in range(0, len(self.a), step):
            ka = torch.einsum("itd,jsd->ijts", self.a[i:i + step], other.a) + float(self.bias)
            rows.append((ka * torch.einsum("itq,jsq->ijts", self.e[i:i + step], other.e)).sum((2, 3)))
        return torch.cat(rows) if rows else self.a.new_zeros(0, len(other.a))

    @staticmethod
    def cat(parts: list["Factors"]) -> "Factors":
        """Stack along examples; shorter position axes are zero-padded (e = 0 adds nothing)."""
        t = max(p.positions for p in parts)
        pad = lambda x: F.pad(x, (0, 0, 0, t - x.shape[1]))  # noqa: E731
        return replace(parts[0], a=torch.cat([pad(p.a) for p in parts]), e=torch.cat([pad(p.e) for p in parts]))


Block = Union[Factors, torch.Tensor]


def to_matrix(block: Block) -> torch.Tensor:
    """A block as its [B, D_l] matrix."""
    return block.materialize() if isinstance(block, Factors) else block


@dataclass
class LayerGrads:
    """Per-example gradients of a batch as one block per layer of ``layout`` (factors or [B, D_l])."""

    blocks: list[Block]
    layout: ParamLayout

    def __len__(self) -> int:
        first = self.blocks[0]
        return len(first.a) if isinstance(first, Factors) else first.shape[0]

    def layer_sq_norms(self) -> torch.Tensor:
        """‖g^l‖² for every example and layer: [B, L]."""
        return torch.stack([b.sq_norms() if isinstance(b, Factors) else sq_norms(b)
                            for b in self.blocks], dim=1)

    def scaled(self, w: torch.Tensor) -> "LayerGrads":
        """Layer l of example i multiplied by ``w[i, l]`` ([B, L]); factors scale e."""
        out: list[Block] = []
        for l, b in enumerate(self.blocks):
            if isinstance(b, Factors):
                out.append(replace(b, e=b.e * w[:, l, None, None].to(b.e.dtype)))
            else:
                out.append(b * w[:, l, None].to(b.dtype))
        return LayerGrads(out, self.layout)

    def dot(self, other: "LayerGrads") -> torch.Tensor:
        """Σ_l ⟨g^l_i, g′^l_j⟩ for all pairs: [B, B′]."""
        total = None
        for b, o in zip(self.blocks, other.blocks):
            if isinstance(b, Factors) and isinstance(o, Factors):
                part = b.dot(o)
            else:
                part = to_matrix(b) @ to_matrix(o).T
            total = part if total is None else total + part
        assert total is not None
        return total

    def flat(self) -> FlatGrads:
        """The materialised [B, D] gradients, columns in ``layout`` order."""
        return FlatGrads(torch.cat([to_matrix(b) for b in self.blocks], dim=1), self.layout)

    @property
    def g(self) -> torch.Tensor:
        """The materialised [B, D] matrix, as :attr:`FlatGrads.g` (costs B·D memory)."""
        return self.flat().g

    @staticmethod
    def cat(parts: list["LayerGrads"]) -> "LayerGrads":
        blocks: list[Block] = []
        for column in zip(*(p.blocks for p in parts)):
            if all(isinstance(b, Factors) for b in column):
                blocks.append(Factors.cat(list(column)))  # type: ignore[arg-type]
            else:
                blocks.append(torch.cat([to_matrix(b) for b in column]))
        return LayerGrads(blocks, parts[0].layout)
