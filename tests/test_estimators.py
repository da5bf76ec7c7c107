"""TracIn, GAS, GAS-L and self-influence equal the brute-force float64 reference (tests/reference.py)."""

from __future__ import annotations

import pytest
import torch

from conftest import ATOL, RTOL
from influence_cli import Session, load_recipe, score
from influence_cli.engine import train_pass
from influence_cli.estimators import layer_weights, self_influence_term
from influence_cli.methods import Method
from reference import reference_grads, reference_scores, reference_self_influence

# kind -> (a `layers` subset as exact module names for the reference, the same subset as the recipe's globs)
SUBSETS = {
    "mlp": (["0", "4"], ["0", "4"]),
    "cnn": (["bn", "fc"], ["bn", "f*"]),
    "bert": (["bert.embeddings.word_embeddings", "bert.embeddings.LayerNorm", "bert.encoder.layer.1.output",
              "classifier"],
             ["bert.embeddings.word_embeddings", "*.embeddings.LayerNorm", "bert.encoder.layer.1.output",
              "classifier"]),
}


_REFERENCE: dict[tuple, tuple] = {}  # the two gradient paths share one (slow) reference per case


def _check_all_methods(run, layers_exact, case):
    session = Session.from_recipe(load_recipe(run.recipe_path), need_test=True)
    assert session.learning_rates == run.learning_rates
    if case not in _REFERENCE:
        _REFERENCE[case] = (reference_grads(run.factory, run.states, *run.train, layers_exact),
                            reference_grads(run.factory, run.states, *run.test, layers_exact))
    train, test = _REFERENCE[case]
    if layers_exact is not None:  # the layout's layers are exactly the reference's owning modules
        assert list(session.layout.layer_names) == list(train[0][0])
    n = len(run.train[1])
    for method in ("tracin", "gas", "gas-l"):
        result = score(session, method=method, k=n, keep_matrix=True)
        want = reference_scores(method, train, test, run.learning_rates)
        assert want.abs().max() > 0
        torch.testing.assert_close(result.passes.matrix, want, rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(result.passes.self_influence, reference_self_influence(method, train,
                                                                                         run.learning_rates),
                                   rtol=RTOL, atol=ATOL)
        # top-k with k = N is the whole row: proponents decreasing, opponents increasing
        for (vals, idx), sign in ((result.passes.proponents, 1), (result.passes.opponents, -1)):
            assert sorted(idx[0].tolist()) == list(range(n))
            torch.testing.assert_close(vals, want.gather(1, idx), rtol=RTOL, atol=ATOL)
            assert bool((sign * (vals[:, :-1] - vals[:, 1:]) >= 0).all())


@pytest.mark.parametrize("kind", ["mlp", "cnn", "bert"])
@pytest.mark.parametrize("subset", [False, True], ids=["all-layers", "layer-subset"])
@pytest.mark.parametrize("factorize", [True, False], ids=["factorized", "torch.func"])
def test_estimators_match_reference(tiny_recipe, kind, subset, factorize):
    exact, globs = SUBSETS[kind] if subset else (None, None)
    formats = ["plain", "training"] if kind != "bert" else ["safetensors", "lr_key"]
    run = tiny_recipe(kind, n_train=7, n_test=3, learning_rates=(0.5, 0.0625), formats=formats,
                      layers=globs, factorize=factorize, seed=["mlp", "cnn", "bert"].index(kind) + 10 * subset)
    _check_all_methods(run, exact, (kind, subset))


@pytest.mark.parametrize("factorize", [True, False], ids=["factorized", "torch.func"])
def test_a_model_that_is_one_layer(tiny_recipe, factorize):
    """A bare nn.Linear: weight and bias form one layer (the root module), for GAS-L too."""
    run = tiny_recipe("linear", n_train=7, n_test=3, learning_rates=(0.5, 0.0625), factorize=factorize, seed=3)
    _check_all_methods(run, None, ("linear", False))
    assert Session.from_recipe(load_recipe(run.recipe_path)).layout.layer_names == ("",)


def test_train_pass_on_a_subset_without_queries(tiny_recipe):
    """Self-influence alone (no query) over a subset of the training set, in the given order."""
    run = tiny_recipe("mlp", n_train=9, n_test=2, learning_rates=(0.2, 0.7))
    session = Session.from_recipe(load_recipe(run.recipe_path))
    subset = torch.tensor([8, 0, 5, 3, 6])
    result = train_pass(session, Method.GAS_L, indices=subset)
    assert result.proponents is None and result.opponents is None and result.matrix is None
    assert result.indices.tolist() == subset.tolist()
    train = reference_grads(run.factory, run.states, run.train[0][subset], run.train[1][subset])
    torch.testing.assert_close(result.self_influence, reference_self_influence("gas-l", train, run.learning_rates),
                               rtol=RTOL, atol=ATOL)


def test_float32_default_is_close_to_the_float64_reference(tiny_recipe):
    """The default dtype (float32) agrees with the float64 reference to float32 accuracy."""
    run = tiny_recipe("cnn", n_train=6, n_test=2, dtype=None)
    result = score(load_recipe(run.recipe_path), method="gas-l", k=6, keep_matrix=True)
    assert result.passes.matrix.dtype == torch.float32
    train = reference_grads(run.factory, run.states, *run.train)
    test = reference_grads(run.factory, run.states, *run.test)
    want = reference_scores("gas-l", train, test, run.learning_rates)
    torch.testing.assert_close(result.passes.matrix.double(), want, rtol=1e-4, atol=1e-5)


def test_batchnorm_uses_running_statistics(tiny_recipe):
    """Eval mode: an example's gradient does not depend on its batch (BatchNorm running stats)."""
    run = tiny_recipe("cnn", n_train=6, n_test=2, factorize=False)
    session = Session.from_recipe(load_recipe(run.recipe_path))
    x, y = session.to_device(*session.train.batch(torch.arange(6)))
    whole = session.gradients(session.weights[0], x, y).g
    alone = torch.cat([session.gradients(session.weights[0], x[i:i + 1], y[i:i + 1]).g for i in range(6)])
    torch.testing.assert_close(whole, alone, rtol=RTOL, atol=ATOL)
    assert not torch.allclose(run.states[0]["bn.running_var"], torch.ones(4))


def test_bert_padding_is_masked(tiny_recipe):
    """Changing the token ids under the padding changes nothing (the mask is honoured)."""
    run = tiny_recipe("bert", n_train=4, n_test=2, learning_rates=(1.0,), factorize=False)
    session = Session.from_recipe(load_recipe(run.recipe_path))
    x, y = session.to_device(*session.train.batch(torch.arange(4)))
    assert bool((x["attention_mask"] == 0).any())
    scrambled = {**x, "input_ids": torch.where(x["attention_mask"] == 1, x["input_ids"], 7)}
    g1 = session.gradients(session.weights[0], x, y).g
    g2 = session.gradients(session.weights[0], scrambled, y).g
    assert not torch.equal(x["input_ids"], scrambled["input_ids"])
    torch.testing.assert_close(g1, g2, rtol=RTOL, atol=1e-12)


@pytest.mark.parametrize("factorize", [True, False], ids=["factorized", "torch.func"])
def test_zero_gradient_scores_zero_not_nan(tiny_recipe, factorize):
    """With layers = the first Linear's weight, an all-zero input has g = x δᵀ = 0: its scores and
    self-influence are 0 (not NaN) for every method, and the other examples still match the reference."""
    gen = torch.Generator().manual_seed(3)
    x, xt = torch.randn(5, 6, generator=gen), torch.randn(2, 6, generator=gen)
    x[0] = 0.0
    xt[1] = 0.0
    run = tiny_recipe("mlp", train=(x, torch.tensor([0, 1, 2, 0, 1])), test=(xt, torch.tensor([2, 0])),
                      layers=["0.weight"], factorize=factorize)
    train = reference_grads(run.factory, run.states, *run.train, ["0.weight"])
    test = reference_grads(run.factory, run.states, *run.test, ["0.weight"])
    session = Session.from_recipe(load_recipe(run.recipe_path), need_test=True)
    for method in ("tracin", "gas", "gas-l"):
        result = score(session, method=method, k=5, keep_matrix=True)
        matrix = result.passes.matrix
        assert bool(torch.isfinite(matrix).all()) and bool(torch.isfinite(result.passes.self_influence).all())
        assert matrix[:, 0].tolist() == [0.0, 0.0] and matrix[1].abs().max() == 0
        assert result.passes.self_influence[0] == 0 and bool((result.passes.self_influence[1:] > 0).all())
        torch.testing.assert_close(matrix, reference_scores(method, train, test, run.learning_rates),
                                   rtol=RTOL, atol=ATOL)

    # GAS-L with one zero layer block (0.weight) and one non-zero block (layer 4): the zero block adds 0
    run.rewrite(layers=["0.weight", "4"])
    train = reference_grads(run.factory, run.states, *run.train, ["0.weight", "4"])
    test = reference_grads(run.factory, run.states, *run.test, ["0.weight", "4"])
    result = score(load_recipe(run.recipe_path), method="gas-l", k=5, keep_matrix=True)
    torch.testing.assert_close(result.passes.matrix, reference_scores("gas-l", train, test, run.learning_rates),
                               rtol=RTOL, atol=ATOL)
    assert float(result.passes.self_influence[0]) == pytest.approx(sum(run.learning_rates), rel=1e-12)


def test_layer_weights_zero_norm():
    sq = torch.tensor([[0.0, 4.0], [0.0, 0.0]], dtype=torch.float64)
    assert layer_weights(sq, Method.GAS_L).tolist() == [[0.0, 0.5], [0.0, 0.0]]
    assert layer_weights(sq, Method.GAS).tolist() == [[0.5, 0.5], [0.0, 0.0]]
    assert self_influence_term(sq, layer_weights(sq, Method.GAS_L)).tolist() == [1.0, 0.0]
    assert self_influence_term(sq, layer_weights(sq, Method.TRACIN)).tolist() == [4.0, 0.0]
