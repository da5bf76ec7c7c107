"""``score``: top-k proponents/opponents equal the brute-force reference's, ``to_dict`` has the
documented layout, and bad arguments are ``ParameterError``s naming the parameter."""

from __future__ import annotations

import pytest
import torch

from conftest import ATOL, RTOL, TinyRun
from influence_cli import InfluenceError, Session, load_recipe, score
from influence_cli.errors import ParameterError
from influence_cli.methods import Method, TestLabels
from reference import reference_grads, reference_scores

N_TRAIN, N_TEST, K = 8, 4, 3


@pytest.fixture
def run(tiny_recipe) -> TinyRun:
    return tiny_recipe("mlp", n_train=N_TRAIN, n_test=N_TEST, learning_rates=(0.4, 0.1), seed=2)


def _session(run: TinyRun) -> Session:
    return Session.from_recipe(load_recipe(run.recipe_path), need_test=True)


def _reference(run: TinyRun, method: str, test_labels: torch.Tensor) -> torch.Tensor:
    """[M, N] reference scores of every test example, its loss taken at ``test_labels``."""
    train = reference_grads(run.factory, run.states, *run.train)
    test = reference_grads(run.factory, run.states, run.test[0], test_labels)
    return reference_scores(method, train, test, run.learning_rates)


@pytest.mark.parametrize("method", ["tracin", "gas", "gas-l"])
def test_topk_equals_the_references_topk(run, method):
    rows = [3, 0]  # a subset, in the order given
    result = score(load_recipe(run.recipe_path), method=method, test_indices=rows, k=K)
    assert result.method == Method(method) and result.test_indices.tolist() == rows
    assert result.loss_labels.tolist() == result.given_labels.tolist() == run.test[1][rows].tolist()
    want = _reference(run, method, run.test[1])[rows]
    for (values, indices), largest in ((result.passes.proponents, True), (result.passes.opponents, False)):
        top = want.topk(K, dim=1, largest=largest)
        assert indices.tolist() == top.indices.tolist()
        torch.testing.assert_close(values, top.values, rtol=RTOL, atol=ATOL)
    assert result.passes.matrix is None


def test_to_dict_layout(run):
    session = _session(run)
    result = score(session, method="gas", test_indices=[1, 2], k=2)
    predictions = session.predict(session.test, torch.tensor([1, 2]))[0]
    data = result.to_dict()
    assert set(data) == {"method", "recipe", "checkpoints", "test"} and data["method"] == "gas"
    assert data["recipe"] == session.recipe.to_dict()
    assert [{k: e[k] for k in ("path", "learning_rate", "learning_rate_source", "sha256")}
            for e in data["checkpoints"]] == [c.to_dict() for c in session.checkpoints]
    assert all({"fit", "share", "under_trained"} <= set(e) for e in data["checkpoints"])  # checkpoint_fit
    labels = run.train[1].tolist()
    for row, (entry, t) in enumerate(zip(data["test"], [1, 2])):
        assert list(entry) == ["test_index", "label", "prediction", "loss_label", "proponents", "opponents"]
        assert entry["test_index"] == t
        assert entry["label"] == entry["loss_label"] == int(run.test[1][t])
        assert entry["prediction"] == int(predictions[row])
        for side, (values, indices) in (("proponents", result.passes.proponents),
                                        ("opponents", result.passes.opponents)):
            assert entry[side] == [{"train_index": i, "score": v, "label": labels[i]}
                                   for v, i in zip(values[row].tolist(), indices[row].tolist())]
            assert all(type(e["train_index"]) is int and type(e["label"]) is int for e in entry[side])


def test_predicted_test_labels_use_the_models_predictions(run):
    session = _session(run)
    predictions = session.predict(session.test, torch.arange(N_TEST))[0]
    assert not torch.equal(predictions, run.test[1])  # so the two modes differ
    result = score(session, method="tracin", test_labels="predicted", k=N_TRAIN, keep_matrix=True)
    assert result.loss_labels.tolist() == result.predictions.tolist() == predictions.tolist()
    assert result.given_labels.tolist() == run.test[1].tolist()
    torch.testing.assert_close(result.passes.matrix, _reference(run, "tracin", predictions), rtol=RTOL, atol=ATOL)
    entries = result.to_dict()["test"]
    assert [e["loss_label"] for e in entries] == [e["prediction"] for e in entries] == predictions.tolist()
    assert [e["label"] for e in entries] == run.test[1].tolist()


@pytest.mark.parametrize("kwargs, parameter, message", [
    ({"k": 0}, "k", "k: must be at least 1, got 0"),
    ({"test_indices": [1, 4]}, "test_indices", "test_indices: index 4 is out of range for 4 examples"),
    ({"test_indices": [-1]}, "test_indices", "test_indices: index -1 is out of range for 4 examples"),
    ({"test_indices": []}, "test_indices", "test_indices: no indices selected"),
    ({"method": "tracin-cp"}, "method", "method: unknown choice 'tracin-cp' (choose from tracin, gas, gas-l, ekfac, arnoldi)"),
    ({"test_labels": "true"}, "test_labels", "test_labels: unknown choice 'true' (choose from given, predicted)"),
])
def test_bad_arguments_name_the_parameter(run, kwargs, parameter, message):
    with pytest.raises(ParameterError) as info:
        score(load_recipe(run.recipe_path), **kwargs)
    assert (info.value.parameter, info.value.message) == (parameter, message)


def test_repeated_test_indices_are_scored_once(run):
    result = score(load_recipe(run.recipe_path), test_indices=[2, 0, 2], k=1)
    assert result.test_indices.tolist() == [2, 0] and [t["test_index"] for t in result.to_dict()["test"]] == [2, 0]


def test_a_test_split_without_labels_is_explained_at_the_predictions(run):
    torch.save({"inputs": run.test[0]}, run.dir / "test.pt")
    session = _session(run)
    with pytest.raises(ParameterError) as info:
        score(session, k=2)
    assert info.value.parameter == "test_labels" and info.value.message == (
        "test_labels: data.test has no labels; explain the model's predictions with `test_labels` predicted")
    result = score(session, test_labels=TestLabels.PREDICTED, k=2)
    assert [e["label"] for e in result.to_dict()["test"]] == [None] * N_TEST


def test_a_regression_loss_has_no_predictions(tiny_recipe):
    gen = torch.Generator().manual_seed(1)
    run = tiny_recipe("mlp", loss="mse", train=(torch.randn(5, 6, generator=gen), torch.randn(5, 3, generator=gen)),
                      test=(torch.randn(2, 6, generator=gen), torch.randn(2, 3, generator=gen)))
    result = score(load_recipe(run.recipe_path), k=2)
    entry = result.to_dict()["test"][0]
    assert result.predictions is None and entry["prediction"] is None
    assert entry["label"] == pytest.approx(run.test[1][0].tolist(), rel=1e-7)
    with pytest.raises(ParameterError) as info:
        score(load_recipe(run.recipe_path), test_labels="predicted")
    assert info.value.message == "test_labels: predicted needs a classification loss, not 'mse'"


def test_a_session_without_a_test_split_is_refused(run):
    run.data["data"].pop("test")
    session = Session.from_recipe(load_recipe(run.rewrite()))
    with pytest.raises(InfluenceError) as info:
        score(session)
    assert info.value.message == "data.test: score needs a test split; add it to the recipe"
