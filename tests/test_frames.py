"""``to_pandas()`` on every result: the rows and columns promised by docs/python-api.md, equal to the
result's tensors; a clear error without pandas; ``InfluenceResult.matrix``."""

from __future__ import annotations

import sys

import pandas as pd
import pytest
import torch

from conftest import TinyRun
from influence_cli import InfluenceError, Session, check, load_recipe, mislabel_detect, score, target_identify
from influence_cli.frames import exploded

N_TRAIN, N_TEST, K = 8, 4, 3


@pytest.fixture
def session(tiny_recipe) -> Session:
    run: TinyRun = tiny_recipe("mlp", n_train=N_TRAIN, n_test=N_TEST, seed=3,
                               checks={"max_flagged_mislabel_fraction": 0.5, "max_new_flagged": 100})
    return Session.from_recipe(load_recipe(run.recipe_path), need_test=True)


def test_exploded_rows_prefix_the_record_and_number_each_list():
    records = [{"test_index": 7, "label": 1, "tags": [1, 2], "pro": [{"train_index": 3, "score": 2.0}],
                "con": [{"train_index": 4, "score": -1.0}, {"train_index": 5, "score": -0.5}]}]
    rows = list(exploded(records, "test_", ("pro", "con")))
    parent = {"test_index": 7, "test_label": 1, "test_tags": [1, 2]}
    assert rows == [{**parent, "side": "pro", "rank": 1, "train_index": 3, "score": 2.0},
                    {**parent, "side": "con", "rank": 1, "train_index": 4, "score": -1.0},
                    {**parent, "side": "con", "rank": 2, "train_index": 5, "score": -0.5}]


def test_influence_rows_are_the_top_k_lists(session):
    result = score(session, test_indices=[2, 0], k=K)
    df = result.to_pandas()
    assert isinstance(df, pd.DataFrame) and len(df) == 2 * 2 * K
    assert {"test_index", "test_label", "side", "rank", "train_index", "score", "label"} <= set(df.columns)
    for row, t in enumerate([2, 0]):
        for side, (values, indices) in (("proponents", result.proponents), ("opponents", result.opponents)):
            part = df[(df.test_index == t) & (df.side == side)].sort_values("rank")
            assert part["rank"].tolist() == list(range(1, K + 1))
            assert part.train_index.tolist() == indices[row].tolist()
            assert part.score.tolist() == pytest.approx(values[row].tolist())


def test_mislabel_rows_are_the_ranking(session):
    result = mislabel_detect(session, top=2)
    df = result.to_pandas()
    assert df.train_index.tolist() == result.order.tolist()
    assert df.score.tolist() == pytest.approx(result.scores.tolist())
    assert df.flagged.tolist() == [True, True] + [False] * (N_TRAIN - 2)


def test_target_rows_are_the_candidates(session):
    result = target_identify(session, k=2, misclassified_only=False)
    df = result.to_pandas()
    assert df.test_index.tolist() == result.test_indices[result.order].tolist()
    assert df.anomaly_score.tolist() == pytest.approx(result.anomaly[result.order].tolist())


def test_check_rows_are_the_rules(session):
    result = check(session, baseline=None)
    df = result.to_pandas()
    assert df.rule.tolist() == [o.rule for o in result.outcomes]
    assert df.passed.tolist() == [o.passed for o in result.outcomes]


def test_without_pandas_the_error_says_how_to_install_it(session, monkeypatch):
    result = check(session, baseline=None)
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` raises ImportError
    with pytest.raises(InfluenceError) as err:
        result.to_pandas()
    assert "influence-cli[pandas]" in str(err.value) and "\n" not in str(err.value)


def test_matrix_is_kept_on_request(session):
    result = score(session, test_indices=[3, 1], k=K, keep_matrix=True)
    assert result.matrix.shape == (2, N_TRAIN)
    values, indices = result.proponents
    torch.testing.assert_close(result.matrix.gather(1, indices), values)
    with pytest.raises(InfluenceError, match="keep_matrix=True"):
        _ = score(session, test_indices=[3], k=K).matrix
