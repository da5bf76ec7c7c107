"""Robust statistics shared by the audits."""

from __future__ import annotations

import math

import torch

#: σ / MAD for a normal distribution: 1.4826 · MAD estimates σ.
MAD_TO_SIGMA = 1.4826
#: σ / mean absolute deviation for a normal distribution: √(π/2).
MEAN_AD_TO_SIGMA = math.sqrt(math.pi / 2)


def robust_z(x: torch.Tensor) -> torch.Tensor:
    """ẑ = (x − median x) / σ̂ with σ̂ = 1.4826 · MAD(x), the median absolute deviation.

    When more than half the values are equal (MAD = 0), σ̂ falls back to √(π/2) · mean |x − median|
    (also a consistent estimate of σ for normal data); a constant x gives zeros. NaN entries stay
    NaN and are ignored by the statistics.
    """
    finite = x[~x.isnan()]
    if len(finite) == 0:
        return torch.zeros_like(x)
    med = finite.median()
    scale = MAD_TO_SIGMA * (finite - med).abs().median()
    if scale <= 0:
        scale = MEAN_AD_TO_SIGMA * (finite - med).abs().mean()
    return (x - med) / scale if scale > 0 else torch.zeros_like(x)
