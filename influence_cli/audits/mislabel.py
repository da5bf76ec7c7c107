"""Mislabel detection: rank every training example by how likely its given label is wrong.

Notation: N training examples z = (x, y), C checkpoints θ_c with learning rates η_c, f_c(x) the
logits at checkpoint c, g_c(z) the per-example loss gradient over the recipe's layers and
g_c^L(z) its block for the *last* selected layer (e.g. the classifier head). Every score is
"higher = more suspicious".

==============  ====================================================  ==========================
method          score s(z)                                            reference
==============  ====================================================  ==========================
``tracin``      Σ_c η_c ‖g_c(z)‖²   (self-influence, all layers)       Pruthi et al. 2020 §4.1
``tracin-last`` Σ_c η_c ‖g_c^L(z)‖² (self-influence, last layer)       same, last layer only
``aum``         −(1/C) Σ_c m_c(z),  m_c = f_c(x)_y − max_{k≠y} f_c(x)_k  Pleiss et al. 2020 (AUM)
``loss``        ℓ(f_C(x), y)        (cross-entropy at the last checkpoint)
``combined``    (1/3) Σ_s ẑ_s(z) over s ∈ {tracin-last, aum, loss}     this tool
==============  ====================================================  ==========================

ẑ_s is the robust z-score of signal s after the transform T of :func:`robust_z` (√ for the
positive signals, identity for ``aum``): ẑ = (T(s) − median) / (1.4826 · MAD). Averaging robust
z-scores keeps each signal's outliers outliers, unlike a rank average. (√ rather than log: the
log spreads the near-zero losses of confidently fitted examples so far that nothing stands out.)

All-layer self-influence is dominated by the first layers, whose gradients scale with the
input's magnitude rather than with label correctness; the last-layer and output-based signals
are not. ``tracin`` keeps its literal meaning; the default is chosen by ``benchmarks/mislabel.py``
(digits, 10% flipped labels, 20 runs: ``combined`` AUPRC 0.990, recall@10% 0.958; ``tracin`` 0.919,
0.891; cleanlab 0.923, 0.909; see ``benchmarks/RESULTS.md``).

Flagging (:class:`FlagRule`): the first ``top`` examples, the first ``fraction``·N, or by default
the automatic cut, which flags the first n of the ranking with

    n = |{z : ẑ(s(z)) > 3.0  and  m̄(z) < 0}|,   m̄(z) = (1/C) Σ_c m_c(z)   (= −``aum``),

ẑ the robust z-score of the method's score under the same transform (``combined`` is not
transformed again). The score test alone is not enough: on clean data almost every example is fit
confidently, the MAD collapses and ordinary examples get large ẑ (on clean digits ẑ > 3.5 flagged
328 of 1,500, 22%); the margin test asks that the model itself, averaged over the checkpoints,
preferred another label. Measured by ``benchmarks/mislabel.py`` (see ``benchmarks/RESULTS.md``):
noisy digits 148 flagged for 150 flips, precision 0.962, recall 0.951 (ẑ > 3.5 alone: 0.958,
0.946); clean digits 0.5 of 1,500 flagged (at most 2); clean separable blobs 0. Expect a few
percent where classes overlap or the model is under-trained (its early margins are negative).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from influence_cli.engine import train_pass
from influence_cli.errors import InfluenceError, ParameterError
from influence_cli.frames import ToPandas
from influence_cli.gradients.layers import select_parameters
from influence_cli.methods import (
    DEFAULT_MISLABEL_METHOD,
    Method,
    MislabelMethod,
    choose,
)
from influence_cli.progress import NoProgress, Progress, ProgressLike, as_progress
from influence_cli.recipe import Recipe
from influence_cli.session import Session
from influence_cli.stats import robust_z

#: Robust z-score above which the automatic cut may flag an example (3.0 measured better than
#: Iglewicz & Hoaglin's 3.5 once the margin test guards against false alarms; see the docstring).
AUTO_Z = 3.0


#: The signals ``combined`` averages.
COMBINED_SIGNALS = (MislabelMethod.TRACIN_LAST, MislabelMethod.AUM, MislabelMethod.LOSS)
#: Signals that are positive by construction: their robust z-score is taken on √s.
POSITIVE_SIGNALS = {MislabelMethod.TRACIN, MislabelMethod.TRACIN_LAST, MislabelMethod.LOSS}


def signal_z(values: torch.Tensor, positive: bool) -> torch.Tensor:
    """ẑ = :func:`~influence_cli.stats.robust_z` of T(v), T = √ when ``positive`` (squared norms,
    losses), else the identity."""
    v = values.double()
    return robust_z(v.clamp_min(0).sqrt() if positive else v)


def last_layer_session(session: Session) -> Session:
    """The same session differentiating only the last selected layer (e.g. the classifier head).
    It bypasses the gradient store, which holds gradients of the recipe's full layer selection."""
    start, end = session.layout.slices[-1]
    offsets = torch.tensor((0, *session.layout.sizes)).cumsum(0).tolist()
    names = [n for n, a in zip(session.layout.names, offsets) if start <= a < end]
    return replace(session, layout=select_parameters(session.model, names), store=None)


def _output_signals(session: Session, indices: torch.Tensor, progress: Progress
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean margin over checkpoints, loss at the last checkpoint, argmax and its probability
    there), from forward passes only."""
    labels = session.train.labels[indices].long()
    chunk = 16 * session.recipe.batch_size
    margin_sum = torch.zeros(len(indices), dtype=torch.float64)
    loss, suggested, prob = [], [], []
    with progress.task("forward passes", total=len(indices) * len(session.weights)) as advance:
        for c in range(len(session.weights)):
            for start in range(0, len(indices), chunk):
                idx, y = indices[start:start + chunk], labels[start:start + chunk]
                logits = session.outputs(session.train, idx, checkpoint=c).double().cpu()
                given = logits.gather(1, y[:, None]).squeeze(1)
                others = logits.scatter(1, y[:, None], -math.inf).max(1).values
                margin_sum[start:start + len(idx)] += given - others
                if c == len(session.weights) - 1:
                    loss.append(F.cross_entropy(logits, y, reduction="none"))
                    p, k = logits.softmax(1).max(1)
                    suggested.append(k)
                    prob.append(p)
                advance(len(idx))
    return margin_sum / len(session.weights), torch.cat(loss), torch.cat(suggested), torch.cat(prob)


def compute_signals(session: Session, methods: set[MislabelMethod], indices: torch.Tensor | None = None,
                    progress: Progress | None = None) -> tuple[dict[MislabelMethod, torch.Tensor], torch.Tensor,
                                                               torch.Tensor]:
    """Every single-signal score in ``methods`` (``combined`` expands to its parts), plus the
    suggested label and its probability at the last checkpoint. All float64, on the CPU."""
    progress = progress or NoProgress()
    indices = torch.arange(len(session.train)) if indices is None else indices
    if MislabelMethod.COMBINED in methods:
        methods = (methods - {MislabelMethod.COMBINED}) | set(COMBINED_SIGNALS)
    margin, loss, suggested, prob = _output_signals(session, indices, progress)
    out: dict[MislabelMethod, torch.Tensor] = {MislabelMethod.AUM: -margin, MislabelMethod.LOSS: loss}
    if MislabelMethod.TRACIN in methods:
        out[MislabelMethod.TRACIN] = train_pass(session, Method.TRACIN, indices=indices,
                                                progress=progress).self_influence.double()
    if MislabelMethod.TRACIN_LAST in methods:
        out[MislabelMethod.TRACIN_LAST] = train_pass(last_layer_session(session), Method.TRACIN, indices=indices,
                                                     progress=progress).self_influence.double()
    return {m: out[m] for m in methods}, suggested, prob


def combine(signals: dict[MislabelMethod, torch.Tensor], method: MislabelMethod) -> torch.Tensor:
    """The score of ``method`` from its signals (``combined``: the mean of their robust z-scores)."""
    if method is not MislabelMethod.COMBINED:
        return signals[method]
    return torch.stack([signal_z(signals[s], s in POSITIVE_SIGNALS) for s in COMBINED_SIGNALS]).mean(0)


@dataclass(frozen=True)
class FlagRule:
    """Which ranked examples are flagged: ``top`` K, a ``fraction`` of N, or the automatic cut."""

    top: int | None = None
    fraction: float | None = None

    def validate(self, n: int) -> None:
        if self.top is not None and self.fraction is not None:
            raise ParameterError("top", "give `top` or `fraction`, not both")
        if self.top is not None and not 1 <= self.top <= n:
            raise ParameterError("top", f"must be between 1 and the {n} training examples, got {self.top}")
        if self.fraction is not None and not (0 < self.fraction <= 1 and math.isfinite(self.fraction)):
            raise ParameterError("fraction", f"must be in (0, 1], got {self.fraction}")

    @property
    def name(self) -> str:
        return "top" if self.top is not None else "fraction" if self.fraction is not None else "auto"

    def count(self, z: torch.Tensor, mean_margin: torch.Tensor) -> int:
        """How many of the best suspects to flag, given the robust z-scores ``z`` of the scores and
        each example's mean margin m̄ over the checkpoints (same order)."""
        if self.top is not None:
            return self.top
        if self.fraction is not None:
            return max(1, round(self.fraction * len(z)))
        return int(((z > AUTO_Z) & (mean_margin < 0)).sum())

    def describe(self) -> str:
        if self.top is not None:
            return f"the {self.top} highest scores (--top)"
        if self.fraction is not None:
            return f"the highest {self.fraction:.1%} of scores (--fraction)"
        return (f"automatic: as many as have robust z-score (T(s) − median) / (1.4826·MAD) > {AUTO_Z} "
                "(T = √ for positive scores) and mean margin over the checkpoints < 0")


@dataclass
class MislabelResult(ToPandas, records="ranking"):
    """Every training example ranked by suspicion, best suspects first."""

    method: MislabelMethod
    session: Session
    order: torch.Tensor          # [N] training indices, most suspicious first
    scores: torch.Tensor         # [N] s(z) in ``order``
    z: torch.Tensor              # [N] robust z-scores of the scores, in ``order``
    suggested: torch.Tensor      # [N] argmax at the last checkpoint, in ``order``
    suggested_prob: torch.Tensor  # [N]
    flag_rule: FlagRule
    n_flagged: int

    @property
    def flagged_indices(self) -> torch.Tensor:
        return self.order[: self.n_flagged]

    def to_dict(self) -> dict[str, Any]:
        """The stable layout of ``mislabels.json``; ``ranking`` covers all N examples."""
        train = self.session.train
        ranking = [{"rank": r + 1, "train_index": i, "score": s,
                    **train.label_fields("given_label", int(train.labels[i])),
                    **train.label_fields("suggested_label", k), "suggested_prob": p, "flagged": r < self.n_flagged,
                    **train.description(i)}
                   for r, (i, s, k, p) in enumerate(zip(self.order.tolist(), self.scores.tolist(),
                                                        self.suggested.tolist(), self.suggested_prob.tolist()))]
        threshold = float(self.scores[self.n_flagged - 1]) if self.n_flagged else None
        return {
            "method": str(self.method),
            "recipe": self.session.recipe.to_dict(),
            "checkpoints": [c.to_dict() for c in self.session.checkpoints],
            "flag_rule": {"rule": self.flag_rule.name, "top": self.flag_rule.top,
                          "fraction": self.flag_rule.fraction, "auto_z": AUTO_Z if self.flag_rule.name == "auto"
                          else None, "description": self.flag_rule.describe(), "lowest_flagged_score": threshold},
            "n_train": len(self.order),
            "n_flagged": self.n_flagged,
            "ranking": ranking,
        }


def mislabel_detect(recipe_or_session: Recipe | Session, *, method: MislabelMethod | str = DEFAULT_MISLABEL_METHOD,
                    top: int | None = None, fraction: float | None = None,
                    progress: ProgressLike | None = None) -> MislabelResult:
    """Rank all N training examples by the ``method`` score (see the module docstring) and flag
    the best suspects by ``top``, ``fraction`` or the automatic cut (robust z-score and mean margin)."""
    method, progress = choose(MislabelMethod, method, "method"), as_progress(progress)
    rule = FlagRule(top, fraction)
    session = Session.of(recipe_or_session)
    if not session.is_classifier:
        raise InfluenceError(f"loss: mislabel-detect needs a classification loss (cross_entropy), "
                             f"not {session.recipe.loss!r}")
    rule.validate(len(session.train))
    signals, suggested, prob = compute_signals(session, {method, MislabelMethod.AUM}, progress=progress)
    scores = combine(signals, method)
    z = signal_z(scores, method in POSITIVE_SIGNALS)
    # Deterministic order: by score, ties by index (a stable sort of the index order).
    order = torch.sort(scores, descending=True, stable=True).indices
    n_flagged = rule.count(z, -signals[MislabelMethod.AUM])
    return MislabelResult(method, session, order, scores[order], z[order], suggested[order], prob[order],
                          rule, n_flagged)

