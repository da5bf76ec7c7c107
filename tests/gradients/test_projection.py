"""Random projection: the structured maps equal their dense definitions, small layers stay exact,
the seed fixes the projection, and projected inner products are unbiased within JL tolerance."""

from __future__ import annotations

import pytest
import torch
from fixtures.tiny_models import build_cnn

from influence_cli import load_recipe, score
from influence_cli.errors import RecipeError
from influence_cli.gradients.factorized import FactorizedGradients
from influence_cli.gradients.factors import Factors
from influence_cli.gradients.layers import select_parameters
from influence_cli.gradients.per_example import PerExampleGradients
from influence_cli.gradients.projection import (
    ProjectedGradients,
    _CountSketch,
    _Kronecker,
)
from influence_cli.losses import BUILTIN_LOSSES
from influence_cli.recipe import parse_recipe

CE = BUILTIN_LOSSES["cross_entropy"]


def _grads(factorize: bool, dim: int, seed: int, n: int = 6):
    torch.manual_seed(0)
    model = build_cnn(channels=6).double().eval()
    layout = select_parameters(model, None)
    inner = (FactorizedGradients if factorize else PerExampleGradients)(model, layout, CE)
    proj = ProjectedGradients(inner, dim, seed)
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(n, 1, 8, 8, dtype=torch.float64), torch.randint(0, 3, (n,))
    exact = PerExampleGradients(model, layout, CE)(weights, x, y)
    return proj, exact, proj(weights, x, y)


@pytest.mark.parametrize("bias", [False, True])
def test_kronecker_equals_dense_definition(bias: bool) -> None:
    """Σ_t (P_eᵀ e_t)(P_aᵀ ã_t)ᵀ = P_eᵀ G P_a with G = Σ_t e_t ã_tᵀ, ã = [a; 1] with a bias."""
    torch.manual_seed(1)
    a, e = torch.randn(3, 4, 7, dtype=torch.float64), torch.randn(3, 4, 5, dtype=torch.float64)
    tilde = torch.cat([a, torch.ones(3, 4, 1, dtype=torch.float64)], dim=2) if bias else a
    pa, pe = torch.randn(tilde.shape[2], 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    g = torch.einsum("btq,btp->bqp", e, tilde)
    f = Factors(a, e, bias)
    torch.testing.assert_close(_Kronecker(pa, pe)(f), torch.einsum("qk,bqp,pj->bkj", pe, g, pa).flatten(1))
    torch.testing.assert_close(_Kronecker(None, pe)(f), torch.einsum("qk,bqp->bkp", pe, g).flatten(1))


def test_count_sketch_equals_its_matrix() -> None:
    torch.manual_seed(2)
    buckets, signs = torch.randint(0, 4, (9,)), torch.randint(0, 2, (9,)).double() * 2 - 1
    matrix = torch.zeros(9, 4, dtype=torch.float64)
    matrix[torch.arange(9), buckets] = signs
    g = torch.randn(5, 9, dtype=torch.float64)
    torch.testing.assert_close(_CountSketch(buckets, signs, 4)(g), g @ matrix)


@pytest.mark.parametrize("factorize", [True, False])
def test_layers_not_larger_than_k_are_exact(factorize: bool) -> None:
    proj, exact, projected = _grads(factorize, dim=64, seed=0)
    sizes = [b - a for a, b in exact.layout.slices]  # conv 60, bn 12, fc 75
    # fc (75 > 64): Kronecker keeps the 3 classes whole and projects 25 → 21 activations; CountSketch → 64
    assert projected.layout.sizes == (60, 12, 63 if factorize else 64)
    exact_sq, proj_sq = exact.layer_sq_norms(), projected.layer_sq_norms()
    for l, size in enumerate(sizes):
        if size <= 64:
            torch.testing.assert_close(proj_sq[:, l], exact_sq[:, l])
    assert not torch.allclose(proj_sq[:, 2], exact_sq[:, 2])


def test_seed_fixes_the_projection() -> None:
    _, _, first = _grads(True, dim=16, seed=3)
    _, _, again = _grads(True, dim=16, seed=3)
    _, _, other = _grads(True, dim=16, seed=4)
    assert torch.equal(first.g, again.g)
    assert not torch.allclose(first.g, other.g)


@pytest.mark.parametrize("factorize", [True, False])
def test_projected_inner_products_are_unbiased(factorize: bool) -> None:
    """Mean over 200 seeds of ⟨Pg, Pg′⟩ is within 4 standard errors of ⟨g, g′⟩."""
    torch.manual_seed(0)
    model = build_cnn(channels=6).double().eval()
    layout = select_parameters(model, ["fc"])
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.randint(0, 3, (4,))
    exact = PerExampleGradients(model, layout, CE)(weights, x, y).dot(
        PerExampleGradients(model, layout, CE)(weights, x, y))
    inner = (FactorizedGradients if factorize else PerExampleGradients)(model, layout, CE)
    g = inner(weights, x, y)
    draws = torch.stack([ProjectedGradients(inner, 8, s).project(g).dot(ProjectedGradients(inner, 8, s).project(g))
                         for s in range(200)])
    err = (draws.mean(0) - exact).abs() / (draws.std(0) / 200 ** 0.5 + 1e-12)
    assert float(err.max()) < 4.0


def test_recipe_projection_key(tiny_recipe) -> None:
    run = tiny_recipe("cnn", n_train=8, n_test=2, projection={"dim": 1000, "seed": 1})
    exact_run = tiny_recipe("cnn", n_train=8, n_test=2)
    projected = score(load_recipe(run.recipe_path), k=3, keep_matrix=True)
    exact = score(load_recipe(exact_run.recipe_path), k=3, keep_matrix=True)
    torch.testing.assert_close(projected.passes.matrix, exact.passes.matrix)  # every layer ≤ K: exact
    small = score(load_recipe(run.rewrite(projection={"dim": 8, "seed": 1})), k=3, keep_matrix=True)
    assert not torch.allclose(small.passes.matrix, exact.passes.matrix)
    with pytest.raises(RecipeError, match="projection.dim"):
        parse_recipe({**run.data, "projection": {"dim": 0}}, base_dir=run.dir)
