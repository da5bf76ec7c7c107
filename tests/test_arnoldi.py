"""Arnoldi influence (:mod:`influence_cli.curvature.arnoldi`) against the explicit float64
Gauss-Newton matrix G = (1/N) Σ_i J_iᵀ H_i J_i of a tiny MLP and its eigendecomposition."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, hessian, jacrev

from fixtures.tiny_models import build_mlp
from influence_cli import Session, load_recipe, score
from influence_cli.audits.mislabel import compute_signals
from influence_cli.curvature.arnoldi import fit_arnoldi
from influence_cli.errors import ParameterError
from influence_cli.gradients.layers import select_parameters
from influence_cli.gradients.per_example import PerExampleGradients
from influence_cli.methods import MislabelMethod

P = 4


def _loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def _explicit_gauss_newton(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(1/N) Σ_i J_iᵀ H_i J_i, J_i [K, D] by jacrev, H_i [K, K] by hessian."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    total = 0
    for xi, yi in zip(x, y):
        jac = jacrev(lambda p: functional_call(model, p, (xi[None],))[0])(params)
        j = torch.cat([jac[k].flatten(1) for k in params], dim=1)
        out = functional_call(model, params, (xi[None],))[0]
        h = hessian(lambda o: _loss(o[None], yi[None]).sum())(out)
        total = total + j.T @ h @ j
    return total / len(x)


def test_top_eigenpairs_equal_the_explicit_decomposition():
    """Σ_{i≤p} (u_iᵀg′)(u_iᵀg)/λ_i with the Krylov space run to exhaustion: the explicit top-p sum."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = build_mlp(in_dim=3, hidden=4).double()
    x, y = torch.randn(10, 3, generator=gen, dtype=torch.float64), torch.randint(0, 3, (10,), generator=gen)
    layout = select_parameters(model, None)
    weights = {k: v.detach() for k, v in model.named_parameters()}
    fitted = fit_arnoldi(model, weights, layout, _loss, lambda: [(x[:4], y[:4]), (x[4:], y[4:])], len(x),
                         eigenpairs=P, iterations=layout.dim)
    values, vectors = torch.linalg.eigh(_explicit_gauss_newton(model, x, y))
    top = values.argsort(descending=True)[:P]
    torch.testing.assert_close(fitted.eigenvalues, values[top], rtol=1e-9, atol=1e-12)
    grads = PerExampleGradients(model, layout, _loss)
    g, gt = grads(weights, x, y).g, grads(weights, x[:3], y[:3]).g
    u = vectors[:, top]
    want = (gt @ u / values[top]) @ (g @ u).T
    torch.testing.assert_close(fitted.precondition(grads(weights, x[:3], y[:3])).g @ g.T, want, rtol=1e-8, atol=1e-9)


def test_score_arnoldi_is_the_final_checkpoints_explicit_influence(tiny_recipe):
    """``score(recipe, method="arnoldi")`` with ``curvature: {eigenpairs: p, iterations: D}``: the final
    checkpoint's explicit top-p sum (the test labels given, factorised training gradients)."""
    run = tiny_recipe("mlp", n_train=6, n_test=2, learning_rates=(0.4, 0.1), seed=2,
                      curvature={"eigenpairs": P, "iterations": 60})
    result = score(load_recipe(run.recipe_path), method="arnoldi", keep_matrix=True, k=2)
    model = run.factory().double()
    model.load_state_dict(run.states[-1])
    values, vectors = torch.linalg.eigh(_explicit_gauss_newton(model, run.train[0].double(), run.train[1]))
    top = values.argsort(descending=True)[:P]
    layout = select_parameters(model, None)
    grads = PerExampleGradients(model, layout, _loss)
    weights = {k: v.detach() for k, v in model.named_parameters()}
    g, gt = (grads(weights, x.double(), y).g @ vectors[:, top] for x, y in (run.train, run.test))
    torch.testing.assert_close(result.matrix, (gt / values[top]) @ g.T, rtol=1e-7, atol=1e-9)


def test_mislabel_arnoldi_is_the_explicit_self_influence(tiny_recipe):
    """``mislabel-detect --method arnoldi``: Σ_{i≤p} (u_iᵀg(z))²/λ_i at the final checkpoint, at the given labels."""
    run = tiny_recipe("mlp", n_train=6, n_test=1, learning_rates=(0.4, 0.1), seed=3,
                      curvature={"eigenpairs": P, "iterations": 60})
    session = Session.from_recipe(load_recipe(run.recipe_path))
    signals, _, _, _ = compute_signals(session, {MislabelMethod.ARNOLDI})
    model = run.factory().double()
    model.load_state_dict(run.states[-1])
    x, y = run.train[0].double(), run.train[1]
    values, vectors = torch.linalg.eigh(_explicit_gauss_newton(model, x, y))
    top = values.argsort(descending=True)[:P]
    layout = select_parameters(model, None)
    g = PerExampleGradients(model, layout, _loss)({k: v.detach() for k, v in model.named_parameters()}, x, y).g
    torch.testing.assert_close(signals[MislabelMethod.ARNOLDI], ((g @ vectors[:, top]) ** 2 / values[top]).sum(1),
                               rtol=1e-7, atol=1e-9)


def test_arnoldi_refuses_a_projection(tiny_recipe):
    run = tiny_recipe("mlp", n_train=4, n_test=1, learning_rates=(0.4,), projection={"dim": 4})
    with pytest.raises(ParameterError):
        score(load_recipe(run.recipe_path), method="arnoldi", k=1)
