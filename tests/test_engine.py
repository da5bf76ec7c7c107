"""The gradient passes (``query_features`` + ``train_pass``): the streaming top-k, self-influence and
per-column best equal the full matrix and the brute-force float64 reference (tests/reference.py);
merged shards equal one pass; a non-finite gradient names its example and checkpoint."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from conftest import ATOL, RTOL, TinyRun
from influence_cli import Session, load_recipe
from influence_cli import engine
from influence_cli.engine import QueryFeatures, TrainPassResult, query_features, train_pass
from influence_cli.errors import GradientError
from influence_cli.methods import CURVATURE_METHODS, Method
from reference import LayerGrads, reference_grads, reference_scores, reference_self_influence

N_TRAIN, N_TEST, K = 9, 3, 3  # batch_size 4: the training pass streams batches of 4, 4 and 1


@dataclass
class Case:
    """A tiny MLP run, its session, and the reference gradients of both splits."""

    run: TinyRun
    session: Session
    train: list[list[LayerGrads]]
    test: list[list[LayerGrads]]


@pytest.fixture
def case(tiny_recipe) -> Case:
    run = tiny_recipe("mlp", n_train=N_TRAIN, n_test=N_TEST, learning_rates=(0.5, 0.125), seed=4)
    session = Session.from_recipe(load_recipe(run.recipe_path), need_test=True)
    return Case(run, session, reference_grads(run.factory, run.states, *run.train),
                reference_grads(run.factory, run.states, *run.test))


def _query(case: Case, method: Method) -> QueryFeatures:
    return query_features(case.session, method, torch.arange(N_TEST), case.run.test[1])


def _assert_topk(pair: tuple[torch.Tensor, torch.Tensor], matrix: torch.Tensor, k: int, largest: bool) -> None:
    """``pair`` is exactly ``matrix``'s per-row top-k (values and column indices)."""
    want = matrix.topk(k, dim=1, largest=largest)
    assert pair[1].tolist() == want.indices.tolist()
    torch.testing.assert_close(pair[0], want.values, rtol=0, atol=0)


@pytest.mark.parametrize("method", [m for m in Method if m not in CURVATURE_METHODS], ids=str)  # test_ekfac/arnoldi
def test_streaming_topk_equals_the_full_matrix_and_the_reference(case, method):
    query = _query(case, method)
    assert query.indices.tolist() == list(range(N_TEST)) and len(query.per_checkpoint) == 2
    full = train_pass(case.session, method, query, k=K, keep_matrix=True)
    want = reference_scores(str(method), case.train, case.test, case.run.learning_rates)
    torch.testing.assert_close(full.matrix, want, rtol=RTOL, atol=ATOL)
    for pair, largest in ((full.proponents, True), (full.opponents, False)):
        _assert_topk(pair, full.matrix, K, largest)
        assert pair[1].tolist() == want.topk(K, dim=1, largest=largest).indices.tolist()
        torch.testing.assert_close(pair[0], want.gather(1, pair[1]), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(full.self_influence,
                               reference_self_influence(str(method), case.train, case.run.learning_rates),
                               rtol=RTOL, atol=ATOL)
    assert full.indices.tolist() == list(range(N_TRAIN)) and full.column_best is None

    # without the matrix: the same streamed lists, nothing of size M×N kept
    streamed = train_pass(case.session, method, query, k=K)
    assert streamed.matrix is None
    for got, kept in ((streamed.proponents, full.proponents), (streamed.opponents, full.opponents)):
        assert torch.equal(got[0], kept[0]) and torch.equal(got[1], kept[1])


def test_k_larger_than_the_training_set_keeps_every_column(case):
    res = train_pass(case.session, Method.TRACIN, _query(case, Method.TRACIN), k=50, keep_matrix=True)
    assert res.proponents[0].shape == (N_TEST, N_TRAIN)
    _assert_topk(res.proponents, res.matrix, N_TRAIN, largest=True)
    assert res.opponents[1].tolist() == [row[::-1] for row in res.proponents[1].tolist()]


def test_column_best_is_each_training_examples_best_query_rows(case):
    query = _query(case, Method.GAS)
    res = train_pass(case.session, Method.GAS, query, k=K, keep_matrix=True, column_best=2)
    values, rows = res.column_best
    want = res.matrix.topk(2, dim=0)
    assert rows.tolist() == want.indices.T.tolist()
    torch.testing.assert_close(values, want.values.T, rtol=0, atol=0)
    # r is capped at the number of query rows
    capped = train_pass(case.session, Method.GAS, query, k=K, keep_matrix=True, column_best=10)
    assert capped.column_best[1].tolist() == res.matrix.topk(N_TEST, dim=0).indices.T.tolist()


def test_merging_two_halves_equals_one_pass(case):
    query = _query(case, Method.GAS_L)

    def run(indices: torch.Tensor | None) -> TrainPassResult:
        return train_pass(case.session, Method.GAS_L, query, k=K, keep_matrix=True, indices=indices,
                          column_best=2)

    whole = run(None)
    merged = TrainPassResult.merge([run(torch.arange(0, 4)), None, run(torch.arange(4, N_TRAIN))], K)
    assert merged.indices.tolist() == list(range(N_TRAIN))
    for got, want in ((merged.proponents, whole.proponents), (merged.opponents, whole.opponents),
                      (merged.column_best, whole.column_best)):
        assert got[1].tolist() == want[1].tolist()
        torch.testing.assert_close(got[0], want[0], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(merged.matrix, whole.matrix, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(merged.self_influence, whole.self_influence, rtol=RTOL, atol=ATOL)

    # a shard smaller than k: the merged lists are still the top-k over all columns
    parts = [run(torch.arange(0, 2)), run(torch.arange(2, N_TRAIN))]
    assert parts[0].proponents[0].shape == (N_TEST, 2)
    small = TrainPassResult.merge(parts, K)
    assert small.proponents[1].tolist() == whole.proponents[1].tolist()


def test_self_influence_alone_without_queries(case):
    res = train_pass(case.session, Method.TRACIN, k=K, column_best=2)
    assert res.proponents is None and res.opponents is None and res.matrix is None and res.column_best is None
    torch.testing.assert_close(res.self_influence,
                               reference_self_influence("tracin", case.train, case.run.learning_rates),
                               rtol=RTOL, atol=ATOL)


def _gradient_error(run: TinyRun, call: str) -> str:
    session = Session.from_recipe(load_recipe(run.recipe_path), need_test=True)
    with pytest.raises(GradientError) as info:
        if call == "query":
            query_features(session, Method.GAS, torch.arange(len(run.test[1])), run.test[1])
        else:
            train_pass(session, Method.GAS)
    return info.value.message


def _not_finite(split: str, example: int, run: TinyRun, c: int) -> str:
    return (f"data.{split}: the gradient of example {example} at checkpoint {run.ckpt_paths[c]} is not finite "
            "(NaN or inf loss); check that example's inputs and label")


@pytest.mark.parametrize("split, example", [("train", 6), ("test", 2)])
def test_a_non_finite_input_names_the_example_and_the_first_checkpoint(tiny_recipe, split, example):
    """An inf feature makes the first layer's gradient x·δᵀ = inf·0 = NaN; example 6 lies in the
    second training batch (row 2), so the message maps the batch row back to the example."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRAIN, 6, generator=gen)
    x[example, 2] = float("inf")
    labels = torch.arange(N_TRAIN) % 3
    data = {split: (x, labels)} if split == "train" else {split: (x[:N_TEST], labels[:N_TEST])}
    run = tiny_recipe("mlp", n_train=N_TRAIN, n_test=N_TEST, **data)
    assert _gradient_error(run, "query" if split == "test" else "train") == _not_finite(split, example, run, 0)


@pytest.mark.parametrize("call, split", [("query", "test"), ("train", "train")])
def test_a_non_finite_gradient_at_a_later_checkpoint_names_that_checkpoint(tiny_recipe, call, split):
    """Finite but huge final weights at checkpoint 2 (float64, like the run) overflow the logits to
    inf (softmax: NaN); checkpoint 1 is fine."""
    run = tiny_recipe("mlp", n_train=N_TRAIN, n_test=N_TEST)
    state = run.states[1]
    state["2.weight"].zero_()
    state["2.bias"].fill_(10.0)            # the last hidden layer is tanh(10) ≈ 1 for every input
    state["4.weight"] = torch.full_like(state["4.weight"], 1e308, dtype=torch.float64)  # each logit ≈ 8e308 = inf
    torch.save(state, run.ckpt_paths[1])
    assert _gradient_error(run, call) == _not_finite(split, 0, run, 1)


@pytest.mark.parametrize("store", [False, True])
def test_a_query_side_over_budget_is_explained_in_chunks_with_identical_results(tiny_recipe, tmp_path, store):
    """memory_gb so small that 2 of the 5 test examples fit: 3 chunks, one warning, the same top-k,
    matrix and per-training-example best rows as one pass (with a gradient store, chunks reuse it)."""
    run = tiny_recipe("cnn", n_train=9, n_test=5, batch_size=2, **({"cache_dir": "grads"} if store else {}))
    whole = Session.from_recipe(load_recipe(run.recipe_path), need_test=True)
    idx, labels = torch.arange(5), whole.test.labels[:5]
    one = engine.explain(whole, Method.GAS_L, idx, labels, k=3, keep_matrix=True, column_best=2)
    per_example = engine.query_example_bytes(whole, Method.GAS_L, idx, labels)
    run.rewrite(memory_gb=2.5 * per_example / 2**30)
    chunked = Session.from_recipe(load_recipe(run.recipe_path), need_test=True)
    with pytest.warns(UserWarning, match=r"explaining them in 3 chunks of at most 2, one training pass each") as said:
        parts = engine.explain(chunked, Method.GAS_L, idx, labels, k=3, keep_matrix=True, column_best=2)
    assert len([w for w in said if "chunks" in str(w.message)]) == 1
    for got, want in ((parts.proponents, one.proponents), (parts.opponents, one.opponents),
                      (parts.column_best, one.column_best)):
        torch.testing.assert_close(got[0], want[0], rtol=RTOL, atol=ATOL)
        assert torch.equal(got[1], want[1])
    torch.testing.assert_close(parts.matrix, one.matrix, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(parts.self_influence, one.self_influence, rtol=RTOL, atol=ATOL)
