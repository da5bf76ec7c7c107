"""Random projection: the structured maps equal their dense definitions, small layers stay exact,
the seed fixes the projection, and projected inner products are unbiased within JL tolerance."""

from __future__ import annotations

import pytest
import torch
from fixtures.tiny_models import build_cnn

from influence_cli import load_recipe, score
from influence_cli.errors import RecipeError
from influence_cli.gradients import projection as projection_module
from influence_cli.gradients.factorized import FactorizedGradients
from influence_cli.gradients.factors import Factors, LayerGrads
from influence_cli.gradients.layers import ParamLayout, select_parameters
from influence_cli.gradients.per_example import PerExampleGradients
from influence_cli.gradients.projection import (
    ProjectedGradients,
    _CountSketch,
    _hash,
    _TensorSketch,
    materialise_cheaper,
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


def _factors(b: int, t: int, d: int, q: int, bias: bool, seed: int = 1) -> Factors:
    gen = torch.Generator().manual_seed(seed)
    a, e = torch.randn(b, t, d, generator=gen, dtype=torch.float64), torch.randn(b, t, q, generator=gen,
                                                                                  dtype=torch.float64)
    return Factors(a, e, bias)


def _tensor_sketch_matrix(ts: _TensorSketch, d: int, q: int, bias: bool) -> torch.Tensor:
    """The explicit [D_l, K] matrix of the TensorSketch in parameter order (weight row-major, then
    bias): W[i, j] → bucket (h_e(i) + h_a(j)) mod K, sign s_e(i)·s_a(j); b[i] uses ã's last entry."""
    matrix = torch.zeros(q * d + q * int(bias), ts.dim, dtype=torch.float64)
    for i in range(q):
        for j in range(d + int(bias)):
            row = i * d + j if j < d else q * d + i
            matrix[row, int(ts.he[i] + ts.ha[j]) % ts.dim] += ts.se[i] * ts.sa[j]
    return matrix


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk", [None, 40])
def test_tensor_sketch_equals_its_dense_matrix(bias: bool, chunk: int | None, monkeypatch) -> None:
    """Fixed seed: TS from the factors = the materialised G times the explicit matrix built from the
    same hash/sign draws (chunk 40 < T·K: chunked over examples and positions)."""
    if chunk is not None:
        monkeypatch.setattr(projection_module, "_CHUNK_ELEMENTS", chunk)
    b, t, d, q, k = 5, 4, 7, 6, 11
    f = _factors(b, t, d, q, bias)
    gen = torch.Generator().manual_seed(3)
    ts = _TensorSketch(*_hash(d + int(bias), k, gen), *_hash(q, k, gen), k)
    want = f.materialize() @ _tensor_sketch_matrix(ts, d, q, bias)
    torch.testing.assert_close(ts(f), want, rtol=0, atol=1e-6)
    assert float((ts(f) - want).abs().max()) < 1e-10  # float64: only FFT rounding


def test_count_sketch_equals_its_matrix() -> None:
    torch.manual_seed(2)
    buckets, signs = torch.randint(0, 4, (9,)), torch.randint(0, 2, (9,)).double() * 2 - 1
    matrix = torch.zeros(9, 4, dtype=torch.float64)
    matrix[torch.arange(9), buckets] = signs
    g = torch.randn(5, 9, dtype=torch.float64)
    torch.testing.assert_close(_CountSketch(buckets, signs, 4)(g), g @ matrix)


@pytest.mark.parametrize("bias", [False, True])
def test_count_sketch_of_factors_materialises_in_chunks(bias: bool, monkeypatch) -> None:
    """A factorised layer's CountSketch = the sketch of its materialised G in parameter order, also
    when G is formed a few examples at a time."""
    monkeypatch.setattr(projection_module, "_CHUNK_ELEMENTS", 50)  # 1 example per chunk (D_l = 48 or 54)
    f = _factors(5, 3, 8, 6, bias)
    cs = _CountSketch(*_hash(f.materialize().shape[1], 7, torch.Generator().manual_seed(0)), 7)
    torch.testing.assert_close(cs(f), cs(f.materialize()), rtol=0, atol=1e-12)


def test_rule_picks_the_cheaper_sketch() -> None:
    """p·q·(T/64 + 1) ≤ T·(p + q) + (2T + 1)·K·log₂K / 16: materialise many-position layers with a
    small p·q, TensorSketch the rest (the cheaper of the two, as timed on the CPU)."""
    assert not materialise_cheaper(1, 257, 256, 179)    # MLP 256→256 Linear
    assert not materialise_cheaper(1, 257, 256, 1368)
    assert not materialise_cheaper(1, 257, 10, 179)     # 10-class head (a near tie)
    assert materialise_cheaper(64, 73, 16, 194)         # benchmark CNN conv2 (T = 64)
    assert not materialise_cheaper(196, 2305, 256, 1024)  # ResNet-sized conv


def _layer_grads(blocks: list) -> LayerGrads:
    sizes = tuple(b.materialize().shape[1] if isinstance(b, Factors) else b.shape[1] for b in blocks)
    bounds = [0, *torch.tensor(sizes).cumsum(0).tolist()]
    names = tuple(f"l{i}" for i in range(len(blocks)))
    return LayerGrads(blocks, ParamLayout(names, sizes, names, tuple(zip(bounds[:-1], bounds[1:]))))


def test_paths_per_layer_shape() -> None:
    """Exact (D_l ≤ K), CountSketch of G (small factor layer), TensorSketch (big one), CountSketch (dense)."""
    big, small = _factors(4, 2, 60, 50, True), _factors(4, 8, 9, 3, True)  # small: 30 · (8/64 + 1) ≤ 172
    dense = torch.randn(4, 40, dtype=torch.float64)
    proj = ProjectedGradients(None, 16, 0)
    out = proj.project(_layer_grads([_factors(4, 2, 2, 3, True), small, big, dense]))
    assert [proj.path(l) for l in range(4)] == ["exact", "CountSketch", "TensorSketch", "CountSketch"]
    assert out.layout.sizes == (9, 16, 16, 16)


def test_projection_is_the_same_for_any_batch_split() -> None:
    big, small = _factors(6, 3, 60, 50, True), _factors(6, 8, 9, 3, True)
    dense = torch.randn(6, 40, dtype=torch.float64)
    whole = ProjectedGradients(None, 16, 5).project(
        _layer_grads([small, big, dense])).g
    split = ProjectedGradients(None, 16, 5)
    parts = [split.project(_layer_grads([Factors(f.a[i:j], f.e[i:j], True) for f in (small, big)] + [dense[i:j]])).g
             for i, j in ((0, 1), (1, 4), (4, 6))]
    torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=1e-12)


@pytest.mark.parametrize("factorize", [True, False])
def test_layers_not_larger_than_k_are_exact(factorize: bool) -> None:
    proj, exact, projected = _grads(factorize, dim=64, seed=0)
    sizes = [b - a for a, b in exact.layout.slices]  # conv 60, bn 12, fc 75
    # fc (75 > 64): a CountSketch to 64 either way (the factorised 25 × 3 layer is materialised)
    assert projected.layout.sizes == (60, 12, 64)
    exact_sq, proj_sq = exact.layer_sq_norms(), projected.layer_sq_norms()
    for l, size in enumerate(sizes):
        if size <= 64:
            torch.testing.assert_close(proj_sq[:, l], exact_sq[:, l])
    assert not torch.allclose(proj_sq[:, 2], exact_sq[:, 2])


def test_factorised_and_per_example_paths_project_alike() -> None:
    """The materialised factor layer uses the same draws, in parameter order, as the torch.func block."""
    _, _, fact = _grads(True, dim=64, seed=2)
    _, _, flat = _grads(False, dim=64, seed=2)
    torch.testing.assert_close(fact.g, flat.g)


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


def test_tensor_sketch_inner_products_are_unbiased() -> None:
    """Mean over 300 seeds of ⟨TS G, TS G′⟩ is within 4 standard errors of ⟨G, G′⟩ (T = 3, bias)."""
    f = _factors(4, 3, 12, 9, True, seed=7)
    exact = f.materialize() @ f.materialize().T
    draws = []
    for s in range(300):
        gen = torch.Generator().manual_seed(s)
        z = _TensorSketch(*_hash(13, 8, gen), *_hash(9, 8, gen), 8)(f)
        draws.append(z @ z.T)
    draws = torch.stack(draws)
    err = (draws.mean(0) - exact).abs() / (draws.std(0) / 300 ** 0.5 + 1e-12)
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
