"""Sums over the training set, split across processes: what both curvature fits accumulate.

A fit pass computes named sums over this process's training batches (:data:`Sums`); a
:data:`Reduce` turns that local computation into the sums over every process that shares the
training set. One process: :func:`in_process`. Under ``torchrun`` the engine passes a reduce that
runs the local pass on every rank and adds the ranks' sums (a key missing on a rank counts as 0).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Sums = dict[str, torch.Tensor]
Reduce = Callable[[Callable[[], Sums]], Sums]


def in_process(local: Callable[[], Sums]) -> Sums:
    """The :data:`Reduce` of a single process: the local sums are the sums."""
    return local()


def add(sums: Sums, key: str, value: torch.Tensor) -> None:
    """sums[key] += value (a missing key counts as 0)."""
    sums[key] = sums[key] + value if key in sums else value


def total(parts: list[Sums]) -> Sums:
    """The key-wise sum of several processes' :data:`Sums`, added in the given order."""
    out: Sums = {}
    for part in parts:
        for key, value in part.items():
            add(out, key, value)
    return out
