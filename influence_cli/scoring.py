"""``score``: for each test example, its top proponents and opponents among the training set.

This is the library entry point behind ``influence-cli score``; a notebook user calls it directly::

    from influence_cli import load_recipe, score
    result = score(load_recipe("recipe.yaml"), method="gas", test_indices=[0, 3], k=10)
    result.to_dict()["test"][0]["proponents"][:3]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from influence_cli.checkpoint_fit import CheckpointFit, checkpoint_entries, sampled_fit, warn_if_dominated
from influence_cli.engine import TrainPassResult, checkpoint_terms, explain
from influence_cli.errors import InfluenceError, ParameterError
from influence_cli.frames import ToPandas
from influence_cli.methods import Method, TestLabels, choose
from influence_cli.progress import ProgressLike, as_progress
from influence_cli.recipe import Recipe
from influence_cli.selection import check_indices, plain
from influence_cli.session import Session


@dataclass
class InfluenceResult(ToPandas, records="test", explode=("proponents", "opponents")):
    """Top-k proponents (largest scores) and opponents (smallest) per test example."""

    method: Method
    session: Session
    test_indices: torch.Tensor     # [M]
    loss_labels: torch.Tensor      # [M] the labels the test losses were taken at
    given_labels: torch.Tensor     # [M]
    predictions: torch.Tensor | None
    passes: TrainPassResult
    checkpoint_fit: CheckpointFit | None = None  # fit_c on a training sample and share_c of the sum (classifiers)

    @property
    def proponents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, training indices), each [M, k]: row i holds the k largest scores of test example
        ``test_indices[i]``, largest first."""
        assert self.passes.proponents is not None
        return self.passes.proponents

    @property
    def opponents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, training indices), each [M, k]: row i holds the k smallest scores, smallest first."""
        assert self.passes.opponents is not None
        return self.passes.opponents

    @property
    def matrix(self) -> torch.Tensor:
        """The full score matrix, [M, N] on the CPU: entry [i, j] is I(z_j, z′) for the test example
        z′ = ``test_indices[i]`` and training example j (columns in training-set order). Kept only by
        ``score(..., keep_matrix=True)`` (M × N numbers); otherwise an :class:`InfluenceError`."""
        if self.passes.matrix is None:
            raise InfluenceError("the full matrix was not kept: call score(..., keep_matrix=True)")
        return self.passes.matrix

    def to_dict(self) -> dict[str, Any]:
        """The stable machine-readable layout written to ``influence.json``."""
        train, test = self.session.train, self.session.test
        assert test is not None and self.passes.proponents is not None and self.passes.opponents is not None

        def side(values: torch.Tensor, indices: torch.Tensor) -> list[dict[str, Any]]:
            return [{"train_index": i, "score": v, **train.label_fields("label", plain(train.labels[i])),
                     **train.description(i)} for v, i in zip(values.tolist(), indices.tolist())]

        tests = []
        for row, t in enumerate(self.test_indices.tolist()):
            tests.append({
                "test_index": t,
                **test.label_fields("label", plain(self.given_labels[row]) if test.labeled else None),
                **test.label_fields("prediction", None if self.predictions is None else plain(self.predictions[row])),
                **test.label_fields("loss_label", plain(self.loss_labels[row])),
                **test.description(t),
                "proponents": side(self.passes.proponents[0][row], self.passes.proponents[1][row]),
                "opponents": side(self.passes.opponents[0][row], self.passes.opponents[1][row]),
            })
        return {
            "method": str(self.method),
            "recipe": self.session.recipe.to_dict(),
            "checkpoints": checkpoint_entries(self.session, self.checkpoint_fit),
            "test": tests,
        }


def score(recipe: Recipe | Session, *, method: Method | str = Method.TRACIN,
          test_indices: Sequence[int] | None = None, test_labels: TestLabels | str = TestLabels.GIVEN,
          k: int = 10, keep_matrix: bool = False, progress: ProgressLike | None = None) -> InfluenceResult:
    """Score every training example against each selected test example and keep the top-k.

    Scores are I(z, z′) = Σ_c η_c Σ_l w_l(g_c(z)) w_l(g_c(z′)) ⟨g_c^l(z), g_c^l(z′)⟩ (see
    :mod:`influence_cli.estimators`). ``keep_matrix`` also keeps the full [M, N] matrix
    (:attr:`InfluenceResult.matrix`). ``progress``: see :mod:`influence_cli.progress`.
    """
    method, test_labels = choose(Method, method, "method"), choose(TestLabels, test_labels, "test_labels")
    progress = as_progress(progress)
    if k < 1:
        raise ParameterError("k", f"must be at least 1, got {k}")
    session = Session.of(recipe, need_test=True)
    if session.test is None:
        raise InfluenceError("data.test: score needs a test split; add it to the recipe")
    idx = check_indices(range(len(session.test)) if test_indices is None else test_indices,
                        len(session.test), "test_indices")
    given = session.test.labels[idx]
    predictions = session.predict(session.test, idx)[0] if session.is_classifier else None
    if test_labels is TestLabels.PREDICTED:
        if predictions is None:
            raise ParameterError("test_labels", f"predicted needs a classification loss, not {session.recipe.loss!r}")
        loss_labels = predictions
    elif not session.test.labeled:
        raise ParameterError("test_labels", f"{session.test.name} has no labels; explain the model's predictions "
                             "with `test_labels` predicted")
    else:
        loss_labels = given
    passes = explain(session, method, idx, loss_labels, k=k, keep_matrix=keep_matrix, progress=progress)
    return InfluenceResult(method, session, idx, loss_labels, given, predictions, passes,
                           checked_fit(session, method, passes))


def checked_fit(session: Session, method: Method, passes: TrainPassResult) -> CheckpointFit | None:
    """fit_c on a training sample and share_c of ``method``'s checkpoint sum (:mod:`influence_cli.checkpoint_fit`),
    warning about under-trained checkpoints in the sum; ``None`` for a model without class labels, and for
    a method that uses the final checkpoint only."""
    terms = checkpoint_terms(session, method)
    fit = sampled_fit(session) if len(terms) == len(session.weights) else None
    if fit is None:
        return None
    if passes.checkpoint_mass is not None:
        fit = fit.with_share(passes.checkpoint_mass)
    warn_if_dominated(session, fit, f"{method}'s sum over checkpoints")
    return fit

