"""How well each checkpoint fits its training labels, and how much of a checkpoint sum it carries.

Notation: C checkpoints θ_c with learning rates η_c, training examples z = (x, y), f_c(x) the logits.

- **fit**: fit_c = share of training examples with margin m_c(z) = f_c(x)_y − max_{k≠y} f_c(x)_k > 0,
  i.e. the labels checkpoint c reproduces; over all N (``mislabel-detect`` runs those forward passes
  anyway) or a seeded sample of :data:`FIT_SAMPLE` examples (``score``, ``target-identify``: C·FIT_SAMPLE
  forward passes, a small fraction of a gradient pass).
- **under-trained**: fit_c < fit_C / 2, half the final checkpoint's fit (a ResNet-18 at epoch 3: 0.25 vs 0.79).
- **share**: share_c = η_c Σ_i s_c(z_i) / Σ_c′ η_c′ Σ_i s_c′(z_i), s_c the estimator's self-influence term
  at c (TracIn: ‖g_c(z)‖²): the part of the checkpoint sum that c carries over the training set.
  Early checkpoints have large gradients and the largest η, so TracIn's sums are often dominated by
  them. :func:`warn_if_dominated` names every under-trained checkpoint in the sum with its fit and
  share, and says when together they carry more than :data:`DOMINANT_SHARE` of it (then the scores
  mostly describe a model that did not yet fit its data).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from influence_cli.session import Session

#: Training examples whose margins estimate fit_c for ``score`` and ``target-identify``.
FIT_SAMPLE = 1024
#: Under-trained checkpoints carrying more than this share of the checkpoint sum are warned about.
DOMINANT_SHARE = 0.5


@dataclass(frozen=True)
class CheckpointFit:
    """fit_c [C] (share of the training labels each checkpoint reproduces), over ``examples`` training
    examples, and share_c [C] of the checkpoint sum when known (see the module docstring)."""

    fit: torch.Tensor
    examples: int
    share: torch.Tensor | None = None

    def under_trained(self) -> list[int]:
        """Checkpoints c with fit_c < fit_C / 2."""
        return (self.fit < self.fit[-1] / 2).nonzero().flatten().tolist()

    def with_share(self, mass: torch.Tensor | None) -> "CheckpointFit":
        """This fit with share_c = mass_c / Σ mass (``mass``: η_c Σ_i s_c(z_i) per checkpoint)."""
        if mass is None or len(mass) != len(self.fit) or not float(mass.sum()) > 0:
            return self
        return CheckpointFit(self.fit, self.examples, (mass / mass.sum()).double().cpu())

    def entries(self) -> list[dict[str, float | bool]]:
        """Per checkpoint: ``fit``, ``under_trained`` and, when known, ``share`` (for the reports)."""
        early = set(self.under_trained())
        return [{"fit": round(float(f), 4), "under_trained": c in early,
                 **({} if self.share is None else {"share": round(float(self.share[c]), 4)})}
                for c, f in enumerate(self.fit)]


def checkpoint_entries(session: Session, fit: CheckpointFit | None) -> list[dict[str, object]]:
    """Each checkpoint's ``to_dict()`` with its ``fit``, ``under_trained`` and ``share`` when known (reports)."""
    extra = fit.entries() if fit is not None else [{} for _ in session.checkpoints]
    return [{**c.to_dict(), **e} for c, e in zip(session.checkpoints, extra)]


def margins_positive(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B] bool: m(z) > 0, the given label's logit above every other class's."""
    given = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], -torch.inf).max(1).values
    return given > others


def sampled_fit(session: Session, sample: int = FIT_SAMPLE, seed: int = 0) -> CheckpointFit | None:
    """fit_c on ``sample`` training examples drawn with ``seed`` (all when N ≤ sample); ``None`` for a
    model without class labels."""
    if not session.is_classifier:
        return None
    n = len(session.train)
    idx = torch.arange(n) if n <= sample else torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:sample]
    idx = idx.sort().values
    labels = session.train.labels[idx].long()
    fit = torch.tensor([float(margins_positive(session.outputs(session.train, idx, checkpoint=c).cpu(), labels)
                              .double().mean()) for c in range(len(session.weights))], dtype=torch.float64)
    return CheckpointFit(fit, len(idx))


def warn_if_dominated(session: Session, fit: CheckpointFit, what: str) -> None:
    """One warning naming the under-trained checkpoints of ``what``'s checkpoint sum with their fit and share,
    saying whether together they carry more than :data:`DOMINANT_SHARE` of it (nothing when none is)."""
    early = fit.under_trained()
    if fit.share is None or not early:
        return
    names = ", ".join(f"{session.checkpoints[c].path.name} (fits {fit.fit[c]:.0%} of the training labels, carries "
                      f"{fit.share[c]:.0%})" for c in early)
    total = float(fit.share[early].sum())
    if total > DOMINANT_SHARE:
        warnings.warn(f"{what} is dominated by under-trained checkpoints: {names}, against {fit.fit[-1]:.0%} fitted "
                      f"by the last; the scores mostly describe a model that had not yet fit its data: consider "
                      "listing only later checkpoints", stacklevel=3)
    else:
        warnings.warn(f"{what} includes under-trained checkpoints: {names}, against {fit.fit[-1]:.0%} fitted by the "
                      f"last ({total:.0%} of the sum together)", stacklevel=3)
