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

from influence_cli.engine import TrainPassResult, query_features, train_pass
from influence_cli.errors import InfluenceError, ParameterError
from influence_cli.methods import Method, TestLabels, choose
from influence_cli.progress import Progress
from influence_cli.recipe import Recipe
from influence_cli.selection import check_indices, plain
from influence_cli.session import Session


@dataclass
class InfluenceResult:
    """Top-k proponents (largest scores) and opponents (smallest) per test example."""

    method: Method
    session: Session
    test_indices: torch.Tensor     # [M]
    loss_labels: torch.Tensor      # [M] the labels the test losses were taken at
    given_labels: torch.Tensor     # [M]
    predictions: torch.Tensor | None
    passes: TrainPassResult

    def to_dict(self) -> dict[str, Any]:
        """The stable machine-readable layout written to ``influence.json``."""
        train, test = self.session.train, self.session.test
        assert test is not None and self.passes.proponents is not None and self.passes.opponents is not None

        def side(values: torch.Tensor, indices: torch.Tensor) -> list[dict[str, Any]]:
            return [{"train_index": i, "score": v, "label": plain(train.labels[i]), **train.description(i)}
                    for v, i in zip(values.tolist(), indices.tolist())]

        tests = []
        for row, t in enumerate(self.test_indices.tolist()):
            tests.append({
                "test_index": t,
                "label": plain(self.given_labels[row]) if self.session.test.labeled else None,
                "prediction": None if self.predictions is None else plain(self.predictions[row]),
                "loss_label": plain(self.loss_labels[row]),
                **test.description(t),
                "proponents": side(self.passes.proponents[0][row], self.passes.proponents[1][row]),
                "opponents": side(self.passes.opponents[0][row], self.passes.opponents[1][row]),
            })
        return {
            "method": str(self.method),
            "recipe": self.session.recipe.to_dict(),
            "checkpoints": [c.to_dict() for c in self.session.checkpoints],
            "test": tests,
        }


def score(recipe: Recipe | Session, *, method: Method | str = Method.TRACIN,
          test_indices: Sequence[int] | None = None, test_labels: TestLabels | str = TestLabels.GIVEN,
          k: int = 10, keep_matrix: bool = False, progress: Progress | None = None) -> InfluenceResult:
    """Score every training example against each selected test example and keep the top-k.

    Scores are I(z, z′) = Σ_c η_c Σ_l w_l(g_c(z)) w_l(g_c(z′)) ⟨g_c^l(z), g_c^l(z′)⟩ (see
    :mod:`influence_cli.estimators`). ``keep_matrix`` also keeps the full [M, N] matrix.
    """
    method, test_labels = choose(Method, method, "method"), choose(TestLabels, test_labels, "test_labels")
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
    query = query_features(session, method, idx, loss_labels, progress)
    passes = train_pass(session, method, query, k=k, keep_matrix=keep_matrix, progress=progress)
    return InfluenceResult(method, session, idx, loss_labels, given, predictions, passes)
