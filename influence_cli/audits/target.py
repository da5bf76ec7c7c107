"""``target_identify``: which test example was the target of a training-set attack, and its poison.

Following Hammoudeh & Lowd (CCS 2022), each candidate test example z′_i (M candidates) is scored
against the N training examples at the label the model *predicts* for it, ŷ_i (the attacker's
goal), with a renormalised estimator (``gas-l`` by default). One streaming training pass keeps
each candidate's top-k proponents P_i with scores I(z_j, z′_i), and for every training example
its two largest scores over all candidates (the engine's ``column_best``): memory M×k + 2N.

Anomaly statistic (designed by measurement, see ``benchmarks/target.py``)::

    b_ij  = max_{i′ ≠ i} I(z_j, z′_i′)                    best score any *other* candidate gives z_j
    e_i   = (1/k) Σ_{j ∈ P_i} (I(z_j, z′_i) − b_ij)        excess: how exclusively i owns its proponents
    o_i   = Σ_{j ∈ P_i} (c_j − 1) / (k·|S_i|)               overlap with the peers S_i (same ŷ, i′ ≠ i),
            c_j = #{i′ : ŷ_i′ = ŷ_i, j ∈ P_i′}             i.e. mean |P_i ∩ P_i′| / k over the peers
    z(x)  = (x − median x) / (1.4826 · MAD x)               robust z-score over all M candidates
    a_i   = z(e)_i + z(−o)_i                                (z(−o)_i := 0 when i has no peer)
    anomaly_score_i = z(a)_i
    share_i = |{j ∈ P_i : I(z_j, z′_i) > b_ij}| / k                    the share of P_i that i owns (its suspects)
    flagged_i  ⇔  ŷ_i ≠ y_i  and  (anomaly_score_i > τ  or  (anomaly_score_i > τ_s  and  share_i > σ))
                  (τ = 5, τ_s = 2.5, σ = 0.5 by default)

The goal of a targeted attack is a *wrong* prediction, so by default (``misclassified_only``) only
candidates whose prediction ŷ_i differs from their given test label y_i can be flagged, and they
rank first (by anomaly score), before the correctly predicted ones (by anomaly score). The
statistic itself is computed over all M candidates. Turn it off when the test labels are not
ground truth (e.g. inputs under a placeholder label); a test split without labels turns it off.

A backdoor target's proponents are the poison: they support the target far more than any other
candidate (large e) and are nobody else's proponents (small o). Measured on planted attacks
(``benchmarks/target.py``, README): the target's own score distribution (top-k mean, median/MAD
tail z-scores) did not single it out; e alone and −o alone ranked it first in 7 of 10 digits
runs, their sum in 8 of 10 among all candidates, and 10 of 10 (text: 5 of 5) among the
misclassified ones; the clean candidates that reached the threshold were all correctly predicted
(see the README table).

The second clause flags a lower score when the candidate owns a majority of its top-k. A plain
threshold on the anomaly score does not carry over between settings: on the 100-candidate digits
runs the misclassified clean candidates stayed ≤ 2.6 while targets scored 2.0–9.0, but with 10%
label noise in training (``influence-cli demo``, 297 candidates) misclassified clean candidates
reached 6.5 (the flipped training examples are their exclusive proponents, a small natural
"attack"), and a threshold growing with their number n (τ₀ + √(2 ln n), the expected maximum of n
normal scores) cannot cover both (n overlaps: 1–9 vs 6–16). What separates them is how much of the
top-k a candidate owns: 11–22 of 40 for those noisy clean candidates, 18–40 for the targets of 40
poison (``benchmarks/target.py``, README). σ (a majority) and τ_s = 2.5 were chosen on the design
seeds and confirmed on held-out seeds and attacks; τ = 5 is the earlier score-only rule, kept so
that no target it flagged is lost. With fewer poison than σ·k the share clause cannot fire: lower
``k`` to about the number of attack examples expected.

Suspects of a flagged candidate: its top-k proponents z_j with I(z_j, z′_i) > b_ij, i.e. the
training examples whose largest influence over all candidates is on this one, by decreasing
score: what a user removes before retraining.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from influence_cli.engine import TrainPassResult, explain
from influence_cli.errors import InfluenceError, ParameterError
from influence_cli.frames import ToPandas
from influence_cli.methods import (
    DEFAULT_TARGET_K,
    DEFAULT_TARGET_MIN_SHARE,
    DEFAULT_TARGET_SHARE_THRESHOLD,
    DEFAULT_TARGET_THRESHOLD,
    Method,
    choose,
)
from influence_cli.progress import ProgressLike, as_progress
from influence_cli.recipe import Recipe
from influence_cli.scoring import checked_fit
from influence_cli.selection import check_indices, plain
from influence_cli.session import Session
from influence_cli.stats import robust_z


@dataclass
class TargetResult(ToPandas, records="test"):
    """Anomaly scores of every candidate, flags, and the suspects of the flagged ones."""

    method: Method
    session: Session
    test_indices: torch.Tensor      # [M] candidates
    predictions: torch.Tensor       # [M] ŷ, the labels influence was taken at
    labels: torch.Tensor            # [M] y, the candidates' given test labels
    anomaly: torch.Tensor           # [M] z(a)
    margin: torch.Tensor            # [M, k] I(z_j, z′_i) − b_ij over the top-k proponents
    excess: torch.Tensor            # [M] e = mean of the margins
    overlap: torch.Tensor           # [M] o (NaN without peers)
    flagged: torch.Tensor           # [M] bool
    threshold: float
    share_threshold: float
    min_share: float
    passes: TrainPassResult         # proponents [M, k] and column_best [N, 2]
    misclassified_only: bool = True

    @property
    def share(self) -> torch.Tensor:
        """[M] share_i: the fraction of candidate i's top-k proponents that no other candidate beats."""
        return owned_share(self.margin)

    @property
    def misclassified(self) -> torch.Tensor:
        """[M] bool: ŷ_i ≠ y_i."""
        return self.predictions != self.labels

    @property
    def order(self) -> torch.Tensor:
        """Candidate rows, most anomalous first (ties: smaller test index first); with
        ``misclassified_only``, the misclassified candidates before the others."""
        by_index = self.test_indices.argsort(stable=True)
        order = by_index[self.anomaly[by_index].argsort(descending=True, stable=True)]
        if self.misclassified_only:
            order = order[(~self.misclassified[order]).argsort(stable=True)]
        return order

    def suspects(self, row: int) -> list[tuple[int, float]]:
        """(train index, score) of candidate ``row``'s top-k proponents that no other candidate beats."""
        assert self.passes.proponents is not None
        values, indices = self.passes.proponents[0][row], self.passes.proponents[1][row]
        return [(int(j), float(v)) for v, j, keep in zip(values, indices, self.margin[row] > 0) if keep]

    def to_dict(self) -> dict[str, Any]:
        """The stable layout of ``targets.json``: all candidates, most anomalous first."""
        train, test = self.session.train, self.session.test
        assert test is not None
        tests = []
        for rank, row in enumerate(self.order.tolist(), start=1):
            flagged, t = bool(self.flagged[row]), int(self.test_indices[row])
            tests.append({
                "test_index": t,
                "anomaly_score": float(self.anomaly[row]),
                "rank": rank,
                "flagged": flagged,
                **test.label_fields("prediction", plain(self.predictions[row])),
                **test.label_fields("label", plain(self.labels[row])),
                **test.description(t),
                "suspects": [{"train_index": j, "score": v, **train.label_fields("label", plain(train.labels[j])),
                              **train.description(j)} for j, v in (self.suspects(row) if flagged else [])],
            })
        return {"method": str(self.method), "recipe": self.session.recipe.to_dict(), "test": tests}


def best_other(passes: TrainPassResult) -> torch.Tensor:
    """b_ij for every candidate row i and its top-k proponents j: [M, k]. Needs a pass over the
    whole training set (column_best indexed by training index)."""
    assert passes.proponents is not None and passes.column_best is not None
    indices = passes.proponents[1]
    values, rows = passes.column_best[0][indices], passes.column_best[1][indices]   # [M, k, 2]
    if values.shape[-1] < 2:  # a single candidate: nobody else
        return torch.full(indices.shape, float("-inf"), dtype=values.dtype)
    mine = rows[..., 0] == torch.arange(len(indices))[:, None]
    return torch.where(mine, values[..., 1], values[..., 0])


def peer_overlap(passes: TrainPassResult, predictions: torch.Tensor) -> torch.Tensor:
    """o [M] from the top-k lists (see the module docstring); NaN for a candidate without peers."""
    assert passes.proponents is not None
    indices = passes.proponents[1]
    m, k = indices.shape
    overlap = torch.full((m,), float("nan"), dtype=torch.float64)
    n = len(passes.indices)
    for cls in predictions.unique():
        group = (predictions == cls).nonzero().flatten()
        if len(group) < 2:
            continue
        counts = torch.bincount(indices[group].flatten(), minlength=n)
        overlap[group] = (counts[indices[group]] - 1).sum(1).double() / (k * (len(group) - 1))
    return overlap


def owned_share(margin: torch.Tensor) -> torch.Tensor:
    """share_i = |{j ∈ P_i : I(z_j, z′_i) − b_ij > 0}| / k from the margins [M, k]."""
    return (margin > 0).double().mean(1)


def flag_rule(anomaly: torch.Tensor, share: torch.Tensor, eligible: torch.Tensor, threshold: float,
              share_threshold: float, min_share: float) -> torch.Tensor:
    """[M] bool: eligible_i and (anomaly_i > τ or (anomaly_i > τ_s and share_i > σ)),
    with τ = ``threshold``, τ_s = ``share_threshold``, σ = ``min_share``."""
    return eligible & ((anomaly > threshold) | ((anomaly > share_threshold) & (share > min_share)))


def target_identify(recipe_or_session: Recipe | Session, *, method: Method | str = Method.GAS_L,
                    test_indices: Sequence[int] | None = None, k: int = DEFAULT_TARGET_K,
                    threshold: float = DEFAULT_TARGET_THRESHOLD,
                    share_threshold: float = DEFAULT_TARGET_SHARE_THRESHOLD,
                    min_share: float = DEFAULT_TARGET_MIN_SHARE, misclassified_only: bool = True,
                    progress: ProgressLike | None = None) -> TargetResult:
    """Rank the candidate test examples by anomaly score and flag likely attack targets.

    anomaly_score_i = z(z(e)_i + z(−o)_i); flagged ⇔ anomaly_score_i > ``threshold``, or anomaly_score_i
    > ``share_threshold`` and share_i > ``min_share`` (the fraction of its top-k that no other candidate
    beats); with ``misclassified_only`` also ŷ_i ≠ y_i. e (excess) and o (peer overlap) of the top-``k``
    proponents, z the median/MAD z-score over the candidates (formulas in the module docstring).
    Influence is taken at each candidate's predicted label.
    """
    method, progress = choose(Method, method, "method"), as_progress(progress)
    if k < 1:
        raise ParameterError("k", f"must be at least 1, got {k}")
    if not threshold > 0:
        raise ParameterError("threshold", f"must be positive, got {threshold}")
    if not share_threshold > 0:
        raise ParameterError("share_threshold", f"must be positive, got {share_threshold}")
    if not 0 <= min_share <= 1:
        raise ParameterError("min_share", f"must be in [0, 1] (1: the share rule off), got {min_share}")
    session = Session.of(recipe_or_session, need_test=True)
    if session.test is None:
        raise InfluenceError("data.test: target-identify needs a test split of candidates; add it to the recipe")
    session.require_classifier("target-identify")
    idx = check_indices(range(len(session.test)) if test_indices is None else test_indices,
                        len(session.test), "test_indices")
    if len(idx) < 3:  # check_indices has dropped repeats
        raise ParameterError("test_indices", f"target-identify compares candidates; give at least 3 distinct "
                             f"test examples (got {len(idx)})")
    predictions = session.predict(session.test, idx)[0]
    passes = explain(session, method, idx, predictions, k=k, progress=progress, column_best=2)
    checked_fit(session, method, passes)  # warns about under-trained checkpoints in the sum
    assert passes.proponents is not None
    margin = passes.proponents[0] - best_other(passes)
    excess, overlap = margin.mean(1).double(), peer_overlap(passes, predictions)
    combined = robust_z(excess) + robust_z(-overlap).nan_to_num(0.0)
    anomaly = robust_z(combined)
    labels = torch.as_tensor(session.test.labels)[idx]
    misclassified_only = misclassified_only and session.test.labeled  # unlabelled: every prediction counts
    eligible = predictions != labels if misclassified_only else torch.ones_like(anomaly, dtype=torch.bool)
    flagged = flag_rule(anomaly, owned_share(margin), eligible, threshold, share_threshold, min_share)
    return TargetResult(method, session, idx, predictions, labels, anomaly, margin, excess, overlap,
                        flagged, threshold, share_threshold, min_share, passes, misclassified_only)
