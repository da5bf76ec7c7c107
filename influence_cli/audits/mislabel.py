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
``combined``    (1/2) Σ_s ẑ_s(z) over s ∈ {aum, loss}                  this tool
==============  ====================================================  ==========================

ẑ_s is the robust z-score of signal s after the transform T of :func:`robust_z` (√ for the
positive signals, identity for ``aum``): ẑ = (T(s) − median) / (1.4826 · MAD). Averaging robust
z-scores keeps each signal's outliers outliers, unlike a rank average. (√ rather than log: the
log spreads the near-zero losses of confidently fitted examples so far that nothing stands out.)

All-layer self-influence is dominated by the first layers, whose gradients scale with the
input's magnitude rather than with label correctness; the last-layer and output-based signals
are not on small MLPs/CNNs. In BatchNorm ResNets even last-layer self-influence ranked the flips
near random (``benchmarks/matrix.py``, ResNet-18 on a 32×32 imagefolder, 10% flips, 4 runs: AP
0.15–0.35 vs 0.66–0.85 for the final loss), so ``combined`` averages the output-based signals only
(ResNet-18 AP 0.72–0.89, vs 0.39–0.82 with tracin-last in the average; digits MLP/CNN within
0.005 of it; see ``benchmarks/RESULTS.md``).

Flagging (:class:`FlagRule`): the first ``top`` examples, the first ``fraction``·N, or by default
the automatic cut, which flags the first n of the ranking with

    n = |{z : ẑ(s(z)) > 3.0  and  m̄(z) < 0}|,   m̄(z) = (1/C) Σ_c m_c(z)   (= −``aum``),

ẑ the robust z-score of the method's score under the same transform; for ``combined`` ẑ is
min_s ẑ_s (:func:`cut_z`: each signal must be extreme on its own). The score test alone is not
enough: on clean data almost every example is fit confidently, the MAD collapses and ordinary examples get large ẑ (on clean digits ẑ > 3.5 flagged
328 of 1,500, 22%); the margin test asks that the model itself, averaged over the checkpoints,
preferred another label. Measured by ``benchmarks/mislabel.py`` (see ``benchmarks/RESULTS.md``):
noisy digits 131.6 flagged for 150 flips, precision 0.983, recall 0.863 (the old mean-ẑ cut with
tracin-last: 148, 0.962, 0.951); ``benchmarks/matrix.py``: no flag on 6 clean twins. Expect a few
percent where classes overlap or the model is under-trained (its early margins are negative).
Checkpoints fitting under half as many training labels as the last (:mod:`influence_cli.checkpoint_fit`) are
named in one warning.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from influence_cli.checkpoint_fit import CheckpointFit, checkpoint_entries, margins_positive, warn_if_dominated
from influence_cli.engine import curvature_spec, train_pass
from influence_cli.errors import ParameterError
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


#: The signals ``combined`` averages (output-based only: last-layer self-influence ranked the flips of
#: BatchNorm ResNets near random and lowered the average's AP there; see ``benchmarks/matrix.py``).
COMBINED_SIGNALS = (MislabelMethod.AUM, MislabelMethod.LOSS)
#: Signals that are positive by construction: their robust z-score is taken on √s.
POSITIVE_SIGNALS = {MislabelMethod.TRACIN, MislabelMethod.TRACIN_LAST, MislabelMethod.LOSS, MislabelMethod.EKFAC,
                    MislabelMethod.ARNOLDI}


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


def _warn_under_trained(session: Session, fit: CheckpointFit) -> None:
    """One warning naming the under-trained checkpoints (:mod:`influence_cli.checkpoint_fit`; their margins
    enter ``aum``)."""
    early = fit.under_trained()
    if early:
        names = ", ".join(f"{session.checkpoints[c].path.name} ({fit.fit[c]:.0%})" for c in early)
        warnings.warn(f"{len(early)} of {len(fit.fit)} checkpoints fit under half as many training labels as the last "
                      f"({fit.fit[-1]:.0%}): {names}; they are under-trained, and their margins enter the mean margin "
                      "(aum, combined, the automatic cut): consider listing only later checkpoints", stacklevel=4)


class Signals(NamedTuple):
    """What :func:`compute_signals` measured, all float64 on the CPU."""

    scores: dict[MislabelMethod, torch.Tensor]  # [N] per single signal
    suggested: torch.Tensor                      # [N] argmax at the last checkpoint
    prob: torch.Tensor                           # [N] its probability
    fit: CheckpointFit                           # fit_c over all N (share_c of tracin's sum when computed)


def _output_signals(session: Session, indices: torch.Tensor, progress: Progress
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, CheckpointFit]:
    """(mean margin over checkpoints, loss at the last checkpoint, argmax and its probability
    there, every checkpoint's fit), from forward passes only; warns about under-trained checkpoints."""
    labels = session.train.labels[indices].long()
    chunk = 16 * session.recipe.batch_size
    margin_sum = torch.zeros(len(indices), dtype=torch.float64)
    fit = torch.zeros(len(session.weights), dtype=torch.float64)
    loss, suggested, prob = [], [], []
    with progress.task("forward passes", total=len(indices) * len(session.weights)) as advance:
        for c in range(len(session.weights)):
            for start in range(0, len(indices), chunk):
                idx, y = indices[start:start + chunk], labels[start:start + chunk]
                logits = session.outputs(session.train, idx, checkpoint=c).double().cpu()
                given = logits.gather(1, y[:, None]).squeeze(1)
                others = logits.scatter(1, y[:, None], -math.inf).max(1).values
                margin_sum[start:start + len(idx)] += given - others
                fit[c] += float(margins_positive(logits, y).sum()) / len(indices)
                if c == len(session.weights) - 1:
                    loss.append(F.cross_entropy(logits, y, reduction="none"))
                    p, k = logits.softmax(1).max(1)
                    suggested.append(k)
                    prob.append(p)
                advance(len(idx))
    fitted = CheckpointFit(fit, len(indices))
    _warn_under_trained(session, fitted)
    return margin_sum / len(session.weights), torch.cat(loss), torch.cat(suggested), torch.cat(prob), fitted


def compute_signals(session: Session, methods: set[MislabelMethod], indices: torch.Tensor | None = None,
                    progress: Progress | None = None) -> Signals:
    """Every single-signal score in ``methods`` (``combined`` expands to its parts), plus the
    suggested label and its probability at the last checkpoint and every checkpoint's fit."""
    progress = progress or NoProgress()
    indices = torch.arange(len(session.train)) if indices is None else indices
    if MislabelMethod.COMBINED in methods:
        methods = (methods - {MislabelMethod.COMBINED}) | set(COMBINED_SIGNALS)
    curved_methods = (MislabelMethod.EKFAC, MislabelMethod.ARNOLDI)
    if curvature_spec(session).renormalize and methods & set(curved_methods):  # before any work
        raise ParameterError("method", "ekfac/arnoldi self-influence is 1 for every example under the recipe's "
                                       "`curvature: {renormalize: true}`; remove it to rank labels")
    margin, loss, suggested, prob, fit = _output_signals(session, indices, progress)
    out: dict[MislabelMethod, torch.Tensor] = {MislabelMethod.AUM: -margin, MislabelMethod.LOSS: loss}
    if MislabelMethod.TRACIN in methods:
        tracin = train_pass(session, Method.TRACIN, indices=indices, progress=progress)
        out[MislabelMethod.TRACIN] = tracin.self_influence.double()
        fit = fit.with_share(tracin.checkpoint_mass)
        warn_if_dominated(session, fit, "tracin's self-influence")
    if MislabelMethod.TRACIN_LAST in methods:
        out[MislabelMethod.TRACIN_LAST] = train_pass(last_layer_session(session), Method.TRACIN, indices=indices,
                                                     progress=progress).self_influence.double()
    for curved in curved_methods:  # g(z)ᵀ(G + λI)⁻¹g(z) at the last checkpoint
        if curved in methods:
            out[curved] = train_pass(session, Method(curved.value), indices=indices,
                                     progress=progress).self_influence.double()
    return Signals({m: out[m] for m in methods}, suggested, prob, fit)


def _combined_z(signals: dict[MislabelMethod, torch.Tensor]) -> torch.Tensor:
    """[S, N] robust z-scores ẑ_s of the signals ``combined`` averages."""
    return torch.stack([signal_z(signals[s], s in POSITIVE_SIGNALS) for s in COMBINED_SIGNALS])


def combine(signals: dict[MislabelMethod, torch.Tensor], method: MislabelMethod) -> torch.Tensor:
    """The score of ``method`` from its signals (``combined``: the mean of their robust z-scores)."""
    return _combined_z(signals).mean(0) if method is MislabelMethod.COMBINED else signals[method]


def cut_z(signals: dict[MislabelMethod, torch.Tensor], method: MislabelMethod) -> torch.Tensor:
    """The z-score the automatic cut thresholds: ẑ(s) of the method's score, for ``combined``
    min_s ẑ_s (every signal must be extreme on its own; on clean twins the mean alone flagged up
    to 3.5% of an under-trained ResNet-18's examples, min_s ẑ_s 0.2%)."""
    if method is MislabelMethod.COMBINED:
        return _combined_z(signals).min(0).values
    return signal_z(signals[method], method in POSITIVE_SIGNALS)


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
        return (f"the automatic cut: as many as have robust z-score (T(s) − median) / (1.4826·MAD) > {AUTO_Z} "
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
    checkpoint_fit: CheckpointFit | None = None  # fit_c over all N (share_c of tracin's self-influence with tracin)

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
            "checkpoints": checkpoint_entries(self.session, self.checkpoint_fit),
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
    session.require_classifier("mislabel-detect")
    rule.validate(len(session.train))
    signals, suggested, prob, fit = compute_signals(session, {method, MislabelMethod.AUM}, progress=progress)
    scores = combine(signals, method)
    z = signal_z(scores, method in POSITIVE_SIGNALS)
    # Deterministic order: by score, ties by index (a stable sort of the index order).
    order = torch.sort(scores, descending=True, stable=True).indices
    n_flagged = rule.count(cut_z(signals, method), -signals[MislabelMethod.AUM])
    return MislabelResult(method, session, order, scores[order], z[order], suggested[order], prob[order],
                          rule, n_flagged, fit)

