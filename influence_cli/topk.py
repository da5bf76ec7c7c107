"""Streaming top-k: keep the k largest (or smallest) scores per row while columns arrive in blocks.

Memory is M×k, never M×N. Ties are broken by the smaller column index, so the result does not
depend on how the columns were blocked (or sharded across processes).
"""

from __future__ import annotations

import torch


class StreamingTopK:
    """Per-row top-k over a stream of [M, B] score blocks with their column indices."""

    def __init__(self, rows: int, k: int, *, largest: bool, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.k = k
        self.largest = largest
        fill = float("-inf") if largest else float("inf")
        self.values = torch.full((rows, 0), fill, device=device, dtype=dtype)
        self.indices = torch.zeros((rows, 0), dtype=torch.long, device=device)

    def update(self, scores: torch.Tensor, columns: torch.Tensor) -> None:
        """Merge a block of scores [M, B] whose columns are the examples ``columns`` [B]."""
        values = torch.cat([self.values, scores.to(self.values.dtype)], dim=1)
        indices = torch.cat([self.indices, columns.to(self.indices.device).expand(len(values), -1)], dim=1)
        self.values, self.indices = _select(values, indices, self.k, self.largest)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, indices), each [M, min(k, columns seen)], best first."""
        return self.values, self.indices


def _select(values: torch.Tensor, indices: torch.Tensor, k: int, largest: bool
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best of each row, ordered by score then by smaller index (stable, deterministic)."""
    # Sort by index first, then stably by score: equal scores stay in index order.
    order = indices.argsort(dim=1, stable=True)
    values, indices = values.gather(1, order), indices.gather(1, order)
    order = values.argsort(dim=1, descending=largest, stable=True)[:, :k]
    return values.gather(1, order), indices.gather(1, order)


def merge_topk(parts: list[tuple[torch.Tensor, torch.Tensor]], k: int, *, largest: bool
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge several (values, indices) top-k results over disjoint columns into one."""
    values = torch.cat([v for v, _ in parts], dim=1)
    indices = torch.cat([i for _, i in parts], dim=1)
    return _select(values, indices, k, largest)
