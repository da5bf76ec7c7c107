"""Arnoldi influence (Schioppa et al. 2022): the top-p eigenpairs of the Gauss-Newton matrix

    G = (1/N) Σ_i J_iᵀ H_i J_i,    J_i = ∂f(x_i)/∂θ,   H_i = ∂²ℓ(f, y_i)/∂f²

(the selected parameters θ, one checkpoint, by default the final one), found by Arnoldi iteration
with Gauss-Newton-vector products (``torch.func`` jvp, the output Hessian-vector product, vjp; one
pass over the training set per product), and

    I(z, z′) = Σ_{i≤p} (u_iᵀ g(z′)) (u_iᵀ g(z)) / λ_i

over the kept eigenpairs (λ_i > 0). The iteration re-orthogonalises fully (modified Gram-Schmidt)
and stops early when the Krylov space is exhausted; the eigenpairs are those of the symmetrised
Hessenberg matrix, mapped back through the Krylov basis.

Cost: ``iterations`` passes over the training set (each a forward, a jvp and a vjp), D × iterations
numbers for the basis; projecting a gradient costs D × p.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import grad, jvp, vjp

from influence_cli.curvature.sums import Reduce, Sums, in_process
from influence_cli.gradients.layers import ParamLayout
from influence_cli.gradients.per_example import FlatGrads, GradientBatch, call_model
from influence_cli.loading.examples import Inputs
from influence_cli.losses import LossFn

#: The Krylov space counts as exhausted when h_{k+1,k} < BREAKDOWN × max |h|.
BREAKDOWN = 1e-10

LabeledBatches = Callable[[], Iterable[tuple[Inputs, torch.Tensor]]]


@dataclass
class Arnoldi:
    """The kept eigenpairs: λ [p] (descending, > 0) and u [D, p], over ``layout``."""

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    layout: ParamLayout

    def precondition(self, grads: GradientBatch) -> FlatGrads:
        """P g = Σ_i u_i (u_iᵀ g) / λ_i for every example: [B, D]."""
        g = grads.g  # type: ignore[attr-defined]
        u = self.eigenvectors.to(g.dtype)
        return FlatGrads(((g @ u) / self.eigenvalues.to(g.dtype)) @ u.T, self.layout)

    def state(self) -> Sums:
        """The fit's tensors by name, for :meth:`from_state`."""
        return {"eigenvalues": self.eigenvalues, "eigenvectors": self.eigenvectors}

    @classmethod
    def from_state(cls, state: Sums, layout: ParamLayout) -> "Arnoldi":
        """The fit :meth:`state` described, over ``layout``."""
        return cls(state["eigenvalues"], state["eigenvectors"], layout)


def gauss_newton_product(model: nn.Module, weights: dict[str, torch.Tensor], layout: ParamLayout, loss_fn: LossFn,
                         batches: LabeledBatches, n: int, reduce: Reduce = in_process
                         ) -> Callable[[torch.Tensor], torch.Tensor]:
    """v ↦ G v for flat v [D], G over the ``n`` training examples ``batches()`` yields (``reduce``: summed
    over the processes that share them)."""
    names = layout.names
    selected = {k: weights[k] for k in names}
    rest = {k: v for k, v in weights.items() if k not in selected}

    def local(v: torch.Tensor) -> Sums:
        tangent = {k: t.reshape(selected[k].shape).to(selected[k].dtype) for k, t in zip(names, v.split(layout.sizes))}
        total = torch.zeros_like(v)
        for x, y in batches():
            def outputs(params: dict[str, torch.Tensor], x: Inputs = x) -> torch.Tensor:
                return call_model(model, {**rest, **params}, x)

            def loss_grad(out: torch.Tensor, y: torch.Tensor = y) -> torch.Tensor:
                return grad(lambda o: loss_fn(o, y).sum())(out)

            with warnings.catch_warnings():  # jvp scripts a helper: PyTorch's own deprecation notice, not the user's
                warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
                out, jv = jvp(outputs, (selected,), (tangent,))
                hjv = jvp(loss_grad, (out,), (jv,))[1]
            back = vjp(outputs, selected)[1](hjv)[0]
            total += torch.cat([back[k].flatten() for k in names]).to(total.dtype)
        return {"Gv": total}

    def product(v: torch.Tensor) -> torch.Tensor:
        return reduce(lambda: local(v))["Gv"] / n
    return product


def arnoldi(product: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, iterations: int,
            eigenpairs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(λ [p′], u [D, p′]): the ≤ ``eigenpairs`` largest positive Ritz pairs after ``iterations`` steps
    from ``start``."""
    basis = [start / start.norm()]
    h = start.new_zeros(iterations + 1, iterations)
    for k in range(iterations):
        w = product(basis[k])
        for j, b in enumerate(basis):
            h[j, k] = b @ w
            w = w - h[j, k] * b
        h[k + 1, k] = w.norm()
        if h[k + 1, k] <= BREAKDOWN * h.abs().max():
            break
        basis.append(w / h[k + 1, k])
    m = min(len(basis), iterations)
    t = h[:m, :m]
    values, vectors = torch.linalg.eigh((t + t.T) / 2)
    order = values.argsort(descending=True)[:eigenpairs]
    order = order[values[order] > 0]
    return values[order], torch.stack(basis[:m], dim=1) @ vectors[:, order]


def fit_arnoldi(model: nn.Module, weights: dict[str, torch.Tensor], layout: ParamLayout, loss_fn: LossFn,
                batches: LabeledBatches, n: int, *, eigenpairs: int, iterations: int, seed: int = 0,
                reduce: Reduce = in_process) -> Arnoldi:
    """Top ``eigenpairs`` eigenpairs of G at ``weights`` from ``iterations`` Arnoldi steps, the start
    vector drawn with ``seed``; the iteration runs in at least float32. ``reduce`` sums each product
    over the processes that share the training set (``torchrun``; every process then iterates alike)."""
    ref = weights[layout.names[0]]
    start = torch.randn(layout.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    product = gauss_newton_product(model, weights, layout, loss_fn, batches, n, reduce)
    dtype = torch.promote_types(ref.dtype, torch.float32)
    values, vectors = arnoldi(product, start.to(ref.device, dtype), iterations, eigenpairs)
    return Arnoldi(values, vectors, layout)
