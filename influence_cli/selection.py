"""Selecting examples: index lists checked against a split, labels as plain JSON values."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from influence_cli.errors import ParameterError


def check_indices(indices: Sequence[int], n: int, parameter: str) -> torch.Tensor:
    """``indices`` as a tensor after checking each lies in [0, n); repeats are dropped (first kept).

    Errors name ``parameter`` (e.g. ``test_indices``; the CLI shows its flag)."""
    idx = torch.as_tensor(list(dict.fromkeys(int(i) for i in indices)), dtype=torch.long)
    if len(idx) == 0:
        raise ParameterError(parameter, "no indices selected")
    bad = idx[(idx < 0) | (idx >= n)]
    if len(bad):
        raise ParameterError(parameter, f"index {int(bad[0])} is out of range for {n} examples")
    return idx


def plain(value: torch.Tensor) -> int | float | list[Any]:
    """A label as JSON: an int for class labels, a float or list otherwise."""
    if value.dim() > 0:
        return value.tolist()
    return int(value) if not value.is_floating_point() or float(value).is_integer() else float(value)
