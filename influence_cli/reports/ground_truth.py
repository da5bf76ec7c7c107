"""``ground_truth.json``: what a run planted (the demo knows; so can a user's own experiment), so
that the report shows how much of it each audit found."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from influence_cli.files import write_json

GROUND_TRUTH = "ground_truth.json"


def write_ground_truth(out: Path, flipped_train_indices: Iterable[int], target_test_indices: Iterable[int] = (),
                       poison_train_indices: Iterable[int] = ()) -> Path:
    """``out/ground_truth.json``: ``{"flipped_train_indices": [...], "target_test_indices": [...]}`` plus
    ``"poison_train_indices"`` when an attack's training examples are given."""
    poison = sorted(int(i) for i in poison_train_indices)
    return write_json(out / GROUND_TRUTH, {"flipped_train_indices": sorted(int(i) for i in flipped_train_indices),
                                           "target_test_indices": sorted(int(i) for i in target_test_indices),
                                           **({"poison_train_indices": poison} if poison else {})})
