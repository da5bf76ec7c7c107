"""The planted backdoor: a pixel trigger on a few training images of one class, relabelled to another,
and the triggered test image that is the attack's target."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from influence_cli.demo.data import DigitsData
from influence_cli.errors import ParameterError

#: The backdoor trigger: a 3×3 checkerboard stamped in the bottom-right corner (pixels in [0, 1]).
TRIGGER = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
TRIGGER_DESCRIPTION = "3x3 checkerboard, pixels [5:8, 5:8]"


def stamp_trigger(images: torch.Tensor) -> torch.Tensor:
    """A copy of ``images`` [B, 1, 8, 8] with :data:`TRIGGER` on pixels [5:8, 5:8]."""
    out = images.clone()
    out[:, 0, 5:8, 5:8] = TRIGGER
    return out


@dataclass(frozen=True)
class Backdoor:
    """A planted backdoor: ``n_poison`` training images of class ``source`` stamped and relabelled ``target``."""

    n_poison: int = 40
    source: int = 2
    target: int = 7


def plant_backdoor(data: DigitsData, backdoor: Backdoor, *, seed: int) -> DigitsData:
    """Stamp the trigger on ``backdoor.n_poison`` training images whose true and given label are
    ``source`` (seeded choice, label-noise flips left alone) and relabel them ``target``.
    Raises :class:`~influence_cli.errors.ParameterError` (``n_poison``) above half of those images."""
    pool = ((data.clean_labels == backdoor.source) & (data.labels == backdoor.source)).nonzero().flatten()
    if backdoor.n_poison > len(pool) // 2:
        raise ParameterError("n_poison", f"at most {len(pool) // 2} (half the clean training images of digit "
                                         f"{backdoor.source}), got {backdoor.n_poison}")
    gen = torch.Generator().manual_seed(seed + 1)
    poison = pool[torch.randperm(len(pool), generator=gen)[:backdoor.n_poison]].sort().values
    train_x, labels = data.train_x.clone(), data.labels.clone()
    train_x[poison] = stamp_trigger(train_x[poison])
    labels[poison] = backdoor.target
    return replace(data, train_x=train_x, labels=labels, poison=poison)


def append_target(data: DigitsData, model: nn.Module, backdoor: Backdoor) -> DigitsData:
    """``data`` with the attack's target appended to its test split: the first test image of class
    ``source`` that, stamped with the trigger, ``model`` predicts as ``target`` (else the first one),
    stamped and labelled ``source``; its index is ``len(test_y) - 1``."""
    pool = (data.test_y == backdoor.source).nonzero().flatten()
    with torch.no_grad():
        hits = (model(stamp_trigger(data.test_x[pool])).argmax(1) == backdoor.target).nonzero().flatten()
    pick = pool[int(hits[0]) if len(hits) else 0]
    return replace(data, test_x=torch.cat([data.test_x, stamp_trigger(data.test_x[pick:pick + 1])]),
                   test_y=torch.cat([data.test_y, data.test_y[pick:pick + 1]]))
