"""``score``: for each test example, its top proponents and opponents among the training set.

This is the library entry point behind ``influence-cli score``; a notebook user calls it directly::

    from influence_cli import load_recipe, score
    result = score(load_recipe("recipe.yaml"), method="gas", test_indices=[0, 3], k=10)
    result.to_dict()["test"][0]["proponents"][:3]
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Sequence

import torch

from influence_cli.engine import TrainPassResult, query_features, train_pass
from influence_cli.errors import InfluenceError
from influence_cli.estimators import Method
from influence_cli.progress import Progress
from influence_cli.recipe import Recipe
from influence_cli.session import Session


class TestLabels(str, Enum):
    """Which label the test loss is taken at: the given one, or the final model's prediction
    ("why did the model predict this?")."""

    __test__ = False  # not a pytest class
    GIVEN = "given"
    PREDICTED = "predicted"


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
            return [{"train_index": i, "score": v, "label": _plain(train.labels[i]), **train.description(i)}
                    for v, i in zip(values.tolist(), indices.tolist())]

        tests = []
        for row, t in enumerate(self.test_indices.tolist()):
            tests.append({
                "test_index": t,
                "label": _plain(self.given_labels[row]) if self.session.test.labeled else None,
                "prediction": None if self.predictions is None else _plain(self.predictions[row]),
                "loss_label": _plain(self.loss_labels[row]),
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


def _plain(value: torch.Tensor) -> int | float | list[Any]:
    """A label as JSON: an int for class labels, a float or list otherwise."""
    if value.dim() > 0:
        return value.tolist()
    return int(value) if not value.is_floating_point() or float(value).is_integer() else float(value)


def check_indices(indices: Sequence[int], n: int, what: str) -> torch.Tensor:
    """``indices`` as a tensor after checking each lies in [0, n); repeats are dropped (first kept)."""
    idx = torch.as_tensor(list(dict.fromkeys(int(i) for i in indices)), dtype=torch.long)
    if len(idx) == 0:
        raise InfluenceError(f"{what}: no indices selected")
    bad = idx[(idx < 0) | (idx >= n)]
    if len(bad):
        raise InfluenceError(f"{what}: index {int(bad[0])} is out of range for {n} examples")
    return idx


def score(recipe: Recipe | Session, *, method: Method | str = Method.TRACIN,
          test_indices: Sequence[int] | None = None, test_labels: TestLabels | str = TestLabels.GIVEN,
          k: int = 10, keep_matrix: bool = False, progress: Progress | None = None) -> InfluenceResult:
    """Score every training example against each selected test example and keep the top-k.

    Scores are I(z, z′) = Σ_c η_c Σ_l w_l(g_c(z)) w_l(g_c(z′)) ⟨g_c^l(z), g_c^l(z′)⟩ (see
    :mod:`influence_cli.estimators`). ``keep_matrix`` also keeps the full [M, N] matrix.
    """
    method, test_labels = Method(method), TestLabels(test_labels)
    if k < 1:
        raise InfluenceError(f"--top-k: must be at least 1, got {k}")
    session = Session.of(recipe, need_test=True)
    if session.test is None:
        raise InfluenceError("data.test: score needs a test split; add it to the recipe")
    idx = check_indices(range(len(session.test)) if test_indices is None else test_indices,
                        len(session.test), "--test-indices")
    given = session.test.labels[idx]
    predictions = session.predict(session.test, idx)[0] if session.is_classifier else None
    if test_labels is TestLabels.PREDICTED:
        if predictions is None:
            raise InfluenceError(f"--test-labels predicted: needs a classification loss, not {session.recipe.loss!r}")
        loss_labels = predictions
    elif not session.test.labeled:
        raise InfluenceError(f"{session.test.name}: has no labels; explain the model's predictions with "
                             "--test-labels predicted")
    else:
        loss_labels = given
    query = query_features(session, method, idx, loss_labels, progress)
    passes = train_pass(session, method, query, k=k, keep_matrix=keep_matrix, progress=progress)
    return InfluenceResult(method, session, idx, loss_labels, given, predictions, passes)
