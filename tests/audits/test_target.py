"""``target_identify``: the anomaly statistic against a dense reference, and planted backdoors found
(and clean runs left alone) on a small seeded version of ``benchmarks/target.py``."""

from __future__ import annotations

import pytest
import torch

from benchmarks.target import build_vision_run
from influence_cli import Session, load_recipe, score
from influence_cli.audits.target import (TargetResult, best_other, flag_rule, owned_share, peer_overlap,
                                         target_identify)
from influence_cli.engine import TrainPassResult
from influence_cli.stats import robust_z
from influence_cli.errors import ParameterError

@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A small digits backdoor (30 poisoned of 600 training images) and the same run without poison."""
    root = tmp_path_factory.mktemp("planted")
    small = dict(n_poison=30, n_train=600, n_candidates=60, epochs=20, n_ckpts=4)
    return (build_vision_run(root / "attacked", 1, attacked=True, **small),
            build_vision_run(root / "clean", 1, attacked=False, **small))


def _session(run) -> Session:
    return Session.from_recipe(load_recipe(run.recipe_path), need_test=True)


def test_backdoor_target_ranks_first_with_its_poison_as_suspects(planted):
    attacked, _ = planted
    result = target_identify(_session(attacked), method="gas-l")
    data = result.to_dict()
    top = data["test"][0]
    assert top["test_index"] == attacked.target and top["rank"] == 1 and top["flagged"]
    assert top["prediction"] == attacked.target_class
    assert [t["flagged"] for t in data["test"]].count(True) == 1
    suspects = {s["train_index"] for s in top["suspects"]}
    poison = set(attacked.poison.tolist())
    assert len(suspects & poison) >= 0.8 * len(poison)          # most planted examples found ...
    assert len(suspects - poison) <= 0.2 * len(suspects)         # ... and few clean ones with them
    assert all(s["label"] == attacked.target_class for s in top["suspects"])
    scores = [s["score"] for s in top["suspects"]]
    assert scores == sorted(scores, reverse=True)
    assert all(not t["suspects"] for t in data["test"][1:])


def test_clean_run_flags_nothing(planted):
    _, clean = planted
    result = target_identify(_session(clean), method="gas-l")
    assert not bool(result.flagged.any())
    wrong = result.misclassified
    assert not bool(((result.anomaly > result.share_threshold) & (result.share > result.min_share) & wrong).any())
    assert not bool(((result.anomaly > result.threshold) & wrong).any())


def test_statistic_matches_dense_reference(planted):
    """e, o, b and the anomaly score recomputed from the full [M, N] matrix of ``score``."""
    attacked, _ = planted
    session = _session(attacked)
    cand = list(range(0, 60, 3))  # 20 candidates, some classes with a single candidate
    k = 7
    result = target_identify(session, method="gas", test_indices=cand, k=k)
    dense = score(session, method="gas", test_indices=cand, test_labels="predicted", k=k,
                  keep_matrix=True).passes.matrix.double()
    pred = result.predictions
    values, indices = dense.topk(k, dim=1)
    torch.testing.assert_close(result.passes.proponents[1], indices)
    m = len(cand)
    excess, overlap = torch.empty(m, dtype=torch.float64), torch.full((m,), float("nan"), dtype=torch.float64)
    member = torch.zeros_like(dense).scatter_(1, indices, 1.0)
    for i in range(m):
        others = [j for j in range(m) if j != i]
        best = dense[others][:, indices[i]].max(0).values
        excess[i] = (values[i] - best).mean()
        peers = [j for j in others if pred[j] == pred[i]]
        if peers:
            overlap[i] = (member[peers] * member[i]).sum(1).mean() / k
    torch.testing.assert_close(result.excess, excess, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.overlap, overlap, rtol=1e-6, atol=1e-9, equal_nan=True)
    assert overlap.isnan().any() and not overlap.isnan().all()
    expected = robust_z(robust_z(excess) + robust_z(-overlap).nan_to_num(0.0))
    torch.testing.assert_close(result.anomaly, expected, rtol=1e-4, atol=1e-4)
    # suspects: top-k entries whose score beats every other candidate's, by decreasing score
    for row in range(m):
        others = [j for j in range(m) if j != row]
        wins = values[row] > dense[others][:, indices[row]].max(0).values
        assert [j for j, _ in result.suspects(row)] == indices[row][wins].tolist()


def test_robust_z_and_peer_overlap_by_hand():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0])
    med, mad = 3.0, 1.0
    torch.testing.assert_close(robust_z(x), (x - med) / (1.4826 * mad))
    flat = torch.tensor([5.0, 5.0, 5.0, 9.0])  # MAD 0: mean absolute deviation instead
    assert robust_z(flat)[3] == pytest.approx(4.0 / (1.0 * (torch.pi / 2) ** 0.5))
    assert robust_z(torch.ones(4)).abs().sum() == 0
    # three candidates, k = 2: rows 0 and 1 share class 0, row 2 alone in class 1
    indices = torch.tensor([[0, 1], [1, 2], [3, 4]])
    passes = TrainPassResult(torch.arange(5), torch.zeros(5), (torch.zeros(3, 2), indices), None, None)
    overlap = peer_overlap(passes, torch.tensor([0, 0, 1]))
    assert overlap[:2].tolist() == [0.5, 0.5] and overlap[2].isnan()
    # best_other: the best score of another row, or the second best when the row itself is best
    col = (torch.tensor([[0.9, 0.1]] * 5), torch.tensor([[0, 1]] * 5))
    passes = TrainPassResult(torch.arange(5), torch.zeros(5), (torch.zeros(3, 2), indices), None, None, col)
    torch.testing.assert_close(best_other(passes), torch.tensor([[0.1, 0.1], [0.9, 0.9], [0.9, 0.9]]))


def test_bad_inputs_are_one_line_errors(planted):
    """Every bad argument is a ParameterError naming that argument (one error type for all)."""
    session = _session(planted[0])
    for kwargs, detail in (({"test_indices": [0, 1]}, "give at least 3 distinct"),
                           ({"test_indices": [0, 0, 1]}, "3 distinct test examples \\(got 2\\)"),
                           ({"test_indices": [0, 1, 999]}, "index 999"), ({"k": 0}, "at least 1"),
                           ({"threshold": 0.0}, "positive"), ({"min_share": 1.5}, "in \\[0, 1\\]"),
                           ({"min_share": -0.1}, "in \\[0, 1\\]"), ({"share_threshold": 0.0}, "positive"),
                           ({"method": "nope"}, "unknown choice 'nope'")):
        with pytest.raises(ParameterError, match=detail) as exc:
            target_identify(session, **kwargs)
        assert exc.value.parameter == next(iter(kwargs))


def test_result_layout(planted):
    result = target_identify(_session(planted[0]), test_indices=range(10))
    assert isinstance(result, TargetResult)
    data = result.to_dict()
    assert set(data) == {"method", "recipe", "test"} and data["method"] == "gas-l"
    assert [t["rank"] for t in data["test"]] == list(range(1, 11))
    assert sorted(t["test_index"] for t in data["test"]) == list(range(10))
    scores = [t["anomaly_score"] for t in data["test"]]
    assert scores == sorted(scores, reverse=True)
    for t in data["test"]:
        assert set(t) == {"test_index", "anomaly_score", "rank", "flagged", "label", "prediction", "suspects"}


def test_misclassified_candidates_rank_first_and_only_they_are_flagged(planted):
    session = _session(planted[0])
    strict = target_identify(session, threshold=0.5)
    loose = target_identify(session, threshold=0.5, misclassified_only=False)
    torch.testing.assert_close(strict.anomaly, loose.anomaly)
    assert torch.equal(strict.labels, session.test.labels) and strict.misclassified.any()
    wrong = strict.misclassified[strict.order]
    assert wrong[:int(wrong.sum())].all() and not wrong[int(wrong.sum()):].any()   # misclassified first ...
    for part in (strict.order[wrong], strict.order[~wrong]):                      # ... each by anomaly
        assert torch.equal(strict.anomaly[part], strict.anomaly[part].sort(descending=True).values)
    assert torch.equal(strict.flagged, loose.flagged & strict.misclassified)
    assert torch.equal(loose.flagged, loose.anomaly > 0.5) and bool((loose.flagged & ~loose.misclassified).any())
    assert [t["label"] for t in strict.to_dict()["test"]] == session.test.labels[strict.order].tolist()


def test_flag_rule_by_hand():
    """flagged ⇔ eligible and (anomaly > τ or (anomaly > τ_s and share > σ)); share = fraction of positive margins."""
    margin = torch.tensor([[0.3, 0.2, 0.1, -0.1],    # owns 3 of 4
                           [0.3, -0.2, -0.1, -0.1],  # owns 1 of 4 (e.g. a few flipped labels)
                           [0.5, 0.4, 0.0, -0.1],    # owns 2 of 4: a tie (margin 0) is not owned
                           [0.5, 0.4, 0.3, 0.2]])    # owns all, but correctly predicted
    share = owned_share(margin)
    assert share.tolist() == [0.75, 0.25, 0.5, 1.0]
    anomaly = torch.tensor([3.0, 4.0, 4.0, 8.0])
    eligible = torch.tensor([True, True, True, False])
    assert flag_rule(anomaly, share, eligible, 5.0, 2.5, 0.5).tolist() == [True, False, False, False]
    assert flag_rule(anomaly, share, eligible, 5.0, 3.0, 0.5).tolist() == [False, False, False, False]  # strict >
    assert flag_rule(anomaly, share, eligible, 5.0, 2.5, 0.2).tolist() == [True, True, True, False]
    assert flag_rule(anomaly, share, eligible, 3.5, 2.5, 1.0).tolist() == [False, True, True, False]   # score alone
    everyone = torch.ones(4, dtype=torch.bool)
    assert flag_rule(anomaly, share, everyone, 5.0, 2.5, 0.5).tolist() == [True, False, False, True]
    assert flag_rule(anomaly, share, everyone, 9.0, 2.5, 0.5).tolist() == [True, False, False, True]


def test_result_share_and_flags_follow_the_rule(planted):
    result = target_identify(_session(planted[0]), threshold=4.0, share_threshold=1.0, min_share=0.3)
    torch.testing.assert_close(result.share, (result.margin > 0).double().mean(1))
    high, owned = result.anomaly > 4.0, (result.anomaly > 1.0) & (result.share > 0.3)
    assert torch.equal(result.flagged, (high | owned) & result.misclassified)
    row = int(result.order[0])
    assert len(result.suspects(row)) == round(float(result.share[row]) * result.margin.shape[1])
