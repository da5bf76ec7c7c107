"""The digits split and its planted label noise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Noise = Literal["uniform", "pairs"]

#: Class pairs swapped by ``noise="pairs"`` (look-alike digits): 1↔7, 3↔8, 4↔9, 2↔5, 0↔6.
DIGIT_PAIRS = ((1, 7), (3, 8), (4, 9), (2, 5), (0, 6))


@dataclass(frozen=True)
class DigitsData:
    """Digits split into train/test; ``labels`` are the (partly flipped) training labels."""

    train_x: torch.Tensor       # [N, 1, 8, 8] in [0, 1]
    labels: torch.Tensor        # [N] given labels, some flipped
    clean_labels: torch.Tensor  # [N] the original labels
    test_x: torch.Tensor
    test_y: torch.Tensor
    poison: torch.Tensor = torch.empty(0, dtype=torch.long)  # [P] backdoor training indices (relabelled)

    @property
    def flipped(self) -> torch.Tensor:
        """Indices of the training examples whose label was flipped by the label noise (the backdoor
        poison, also mislabelled, is kept apart in ``poison``)."""
        wrong = self.labels != self.clean_labels
        wrong[self.poison] = False
        return wrong.nonzero().flatten()


def digits_data(*, seed: int = 0, noise: Noise = "pairs", noise_rate: float = 0.1, n_train: int = 1500,
                n_test: int = 297) -> DigitsData:
    """Split scikit-learn's 1,797 digits (seeded, pixels scaled to [0, 1]), then flip
    ``round(noise_rate·n_train)`` training labels.

    ``uniform``: a flipped label y becomes (y + s) mod 10 with s uniform in 1..9; ``pairs``: it
    becomes its partner in :data:`DIGIT_PAIRS`.
    """
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=gen)
    x = torch.as_tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8)[order] / 16.0
    y = torch.as_tensor(y, dtype=torch.long)[order]
    tr, te = order.new_tensor(range(n_train)), order.new_tensor(range(n_train, min(n_train + n_test, len(y))))
    clean = y[tr]
    labels = clean.clone()
    flip = torch.randperm(n_train, generator=gen)[: round(noise_rate * n_train)]
    if noise == "uniform":
        shift = torch.randint(1, 10, (len(flip),), generator=gen)
        labels[flip] = (clean[flip] + shift) % 10
    else:
        partner = torch.arange(10)
        for a, b in DIGIT_PAIRS:
            partner[a], partner[b] = b, a
        labels[flip] = partner[clean[flip]]
    return DigitsData(x[tr], labels, clean, x[te], y[te])
