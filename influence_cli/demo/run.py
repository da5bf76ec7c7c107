"""``run_demo``: build the digits run, audit it through the public library calls, write every report,
and measure what was found."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, TypeVar

from influence_cli.audits.mislabel import MislabelResult, mislabel_detect
from influence_cli.audits.target import TargetResult, target_identify
from influence_cli.demo.backdoor import Backdoor
from influence_cli.demo.build import make_digits_run
from influence_cli.demo.training import TrainSchedule
from influence_cli.errors import ParameterError
from influence_cli.progress import Progress, ProgressLike, TimedProgress, as_progress
from influence_cli.recipe import load_recipe
from influence_cli.reports.ground_truth import write_ground_truth
from influence_cli.reports.html import REPORT_FILE
from influence_cli.reports.writer import Result, write_reports
from influence_cli.scoring import InfluenceResult, score
from influence_cli.session import Session

R = TypeVar("R", bound=Result)

#: Shares of the training set inspected (from the top of the mislabel ranking) at which recall is measured.
RECALL_FRACTIONS = (0.05, 0.10, 0.20)
#: The share of the mislabel ranking in which the backdoor poison is looked for.
POISON_TOP = 0.10


def recall_at(ranking: list[int], positives: set[int], fraction: float, n: int) -> float:
    """Share of ``positives`` among the first ``round(fraction·n)`` entries of ``ranking``."""
    k = round(fraction * n)
    return len(positives.intersection(ranking[:k])) / max(len(positives), 1)


@dataclass(frozen=True)
class DemoResult:
    """What the demo planted, the three audits' results, and what they found of it."""

    recipe: Path
    audit: Path                         # where the reports went (the recipe's ``output``)
    n_train: int
    flipped: list[int]                  # label-noise flips (the poison excluded)
    poison: list[int]                   # backdoor training indices (mislabelled too)
    target: int | None                  # the triggered test example (None without a backdoor)
    mislabels: MislabelResult
    influence: InfluenceResult          # one test example
    targets: TargetResult | None        # None without a backdoor
    written: list[Path]                 # every file written into ``audit``

    @property
    def ranking(self) -> list[int]:
        """Training indices, most suspicious label first."""
        return [int(i) for i in self.mislabels.order]

    @property
    def recall(self) -> dict[float, float]:
        """Fraction inspected → recall of the planted flips (:func:`recall_at`), for :data:`RECALL_FRACTIONS`."""
        flipped = set(self.flipped)
        return {f: recall_at(self.ranking, flipped, f, self.n_train) for f in RECALL_FRACTIONS}

    @property
    def flagged(self) -> int:
        """Examples flagged by mislabel-detect's cut."""
        return len({int(i) for i in self.mislabels.flagged_indices})

    @property
    def flagged_flipped(self) -> int:
        """Flagged examples that are planted flips."""
        return len({int(i) for i in self.mislabels.flagged_indices} & set(self.flipped))

    @property
    def poison_in_top(self) -> int:
        """Poison among the first round(:data:`POISON_TOP`·n_train) of the mislabel ranking."""
        return len(set(self.poison).intersection(self.ranking[:round(POISON_TOP * self.n_train)]))

    @property
    def target_row(self) -> dict[str, Any] | None:
        """The target's entry of ``targets.json`` (rank, flagged, suspects)."""
        if self.targets is None:
            return None
        return next(t for t in self.targets.to_dict()["test"] if t["test_index"] == self.target)

    @property
    def poison_in_suspects(self) -> int:
        """The target's suspects that are backdoor poison (0 without a backdoor)."""
        row = self.target_row
        return 0 if row is None else len({s["train_index"] for s in row["suspects"]} & set(self.poison))

    @property
    def report(self) -> Path:
        """The HTML report."""
        return self.audit / REPORT_FILE


def poison_count(n_train: int, epochs: int, n_poison: int | None) -> int:
    """The backdoor's poison count: ``n_poison``, or round(40·n_train/1500) when it is ``None``.
    Raises :class:`~influence_cli.errors.ParameterError` unless 100 ≤ n_train ≤ 1700, epochs ≥ 1 and
    n_poison ≥ 0."""
    if not 100 <= n_train <= 1700:
        raise ParameterError("n_train", f"must be between 100 and 1700, got {n_train}")
    if epochs < 1:
        raise ParameterError("epochs", f"must be at least 1, got {epochs}")
    if n_poison is None:
        return round(40 * n_train / 1500)
    if n_poison < 0:
        raise ParameterError("n_poison", f"must be 0 or more, got {n_poison}")
    return n_poison


def run_demo(out: Path | str, *, seed: int = 0, n_train: int = 1500, epochs: int = 30, n_poison: int | None = None,
             test_index: int = 0, progress: ProgressLike | None = None) -> DemoResult:
    """Build the digits run in ``out`` (:func:`~influence_cli.demo.build.make_digits_run`: ``n_train``
    training images, ``epochs`` epochs, ``n_poison`` backdoor poison, default :func:`poison_count`;
    0: no backdoor), then run ``mislabel-detect``, ``score`` (GAS-L, ``test_index``, top 5) and, with a
    backdoor, ``target-identify`` on its recipe. Into ``out/audit`` (the recipe's ``output``) it writes
    ``ground_truth.json`` (``flipped_train_indices``: the label-noise flips; ``target_test_indices``:
    the triggered test example; ``poison_train_indices``: the backdoor poison), then each audit's
    reports and run.json entry (:func:`~influence_cli.reports.writer.write_reports`, replacing older
    results), and ``report.html``."""
    backdoor = Backdoor(n_poison=poison_count(n_train, epochs, n_poison))
    progress = as_progress(progress)
    with progress.task("train the digits CNN", total=1) as advance:
        path, data = make_digits_run(Path(out), seed=seed, n_train=n_train, schedule=TrainSchedule.for_epochs(epochs),
                                     backdoor=backdoor)
        advance(1)
    session = Session.from_recipe(load_recipe(path), need_test=True)
    mislabels, mislabel_time = _timed(lambda p: mislabel_detect(session, progress=p), progress)
    # GAS-L, not TracIn: TracIn's proponents are dominated by high-loss (often mislabelled) examples;
    # on this run 43% of TracIn's top-10 proponents of test examples 0-49 are flipped labels, 0.2% of GAS-L's.
    influence, score_time = _timed(lambda p: score(session, method="gas-l", test_indices=[test_index], k=5,
                                                   progress=p), progress)
    poison = data.poison.tolist()
    target = len(data.test_y) - 1 if poison else None
    targets, target_time = _timed(lambda p: target_identify(session, progress=p), progress) if poison else (None, {})
    audit = session.recipe.resolve(session.recipe.output)
    write = partial(write_reports, out=audit, overwrite=True)  # the demo rebuilt the run: older results are stale
    written = [write_ground_truth(audit, data.flipped.tolist(), [] if target is None else [target],
                                  poison_train_indices=poison),
               *write(influence, **score_time),
               *(write(targets, **target_time) if targets is not None else []),
               *write(mislabels, html=True, **mislabel_time)]
    return DemoResult(path, audit, len(data.labels), data.flipped.tolist(), poison, target, mislabels, influence,
                      targets, list(dict.fromkeys(written)))


def _timed(run: Callable[[Progress], R], progress: Progress) -> tuple[R, dict[str, Any]]:
    """``run(progress)`` with its own timer; returns its result and the ``seconds`` and ``tasks`` (the
    wall time of each pass) that :func:`~influence_cli.reports.writer.write_reports` records in run.json."""
    timer = TimedProgress(progress)
    result = run(timer)
    return result, {"seconds": timer.seconds, "tasks": timer.timings}
