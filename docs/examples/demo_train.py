"""A ``--train`` function for ``influence-cli evaluate`` on the demo's run (``influence-cli demo``).

``train(indices, seed)`` retrains the demo's digits CNN, as the demo trained it (same SGD schedule),
on the training examples ``indices`` (a sorted int64 tensor) and returns the model; ``evaluate`` loads
it into the recipe's model and takes the test losses. Copy this file beside the run's recipe::

    influence-cli demo --out runs/demo
    cp docs/examples/demo_train.py runs/demo/
    influence-cli evaluate runs/demo/recipe.yaml --train demo_train.py:train --subsets 20 --test-indices 0:50

Set ``EPOCHS`` to the demo's ``--epochs`` when it was not the default 30. Your own function does the
same with your training loop: the subset's examples, the same schedule, the given seed.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from influence_cli.demo import TrainSchedule, train_model

DATA = Path(__file__).resolve().parent / "data" / "train.pt"   # beside the recipe, as the demo writes it


def train(indices: torch.Tensor, seed: int) -> nn.Module:
    data = torch.load(DATA, weights_only=True)
    schedule = TrainSchedule.for_epochs(int(os.environ.get("EPOCHS", "30")))
    return train_model("cnn", data["inputs"][indices], data["labels"][indices], seed=seed, schedule=schedule)
