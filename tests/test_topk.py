"""Streaming top-k equals a full sort (ties broken by the smaller index), however the columns are blocked."""

from __future__ import annotations

import pytest
import torch

from influence_cli.topk import StreamingTopK, merge_topk


def _full_sort(scores: torch.Tensor, k: int, largest: bool) -> tuple[list[list[float]], list[list[int]]]:
    """The reference: sort every row by (score, index), best score first, smaller index first on ties."""
    values, indices = [], []
    for row in scores.tolist():
        order = sorted(range(len(row)), key=lambda j: (-row[j] if largest else row[j], j))[:k]
        values.append([row[j] for j in order])
        indices.append(order)
    return values, indices


def _scores(m: int = 4, n: int = 23, seed: int = 0) -> torch.Tensor:
    """Integer-valued scores in a small range: many ties."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(-3, 4, (m, n), generator=gen).to(torch.float64) / 2


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("block", [1, 3, 7, 23])
@pytest.mark.parametrize("k", [1, 5, 23])
def test_streaming_equals_full_sort(largest, block, k):
    scores = _scores()
    top = StreamingTopK(4, k, largest=largest, dtype=torch.float64)
    for start in range(0, 23, block):
        cols = torch.arange(start, min(start + block, 23))
        top.update(scores[:, cols], cols)
    values, indices = top.result()
    want_values, want_indices = _full_sort(scores, k, largest)
    assert indices.tolist() == want_indices
    assert values.tolist() == want_values
    assert values.dtype == torch.float64


@pytest.mark.parametrize("largest", [True, False])
def test_shuffled_blocks_and_merge_give_the_same_answer(largest):
    """Columns arriving out of order (shards), and shards merged with merge_topk, change nothing."""
    scores = _scores(seed=1)
    want = _full_sort(scores, 6, largest)
    perm = torch.randperm(23, generator=torch.Generator().manual_seed(2))
    top = StreamingTopK(4, 6, largest=largest, dtype=torch.float64)
    for cols in perm.split(5):
        top.update(scores[:, cols], cols)
    assert (top.result()[0].tolist(), top.result()[1].tolist()) == want

    shards = []
    for cols in (torch.arange(0, 9), torch.arange(9, 10), torch.arange(10, 23)):
        part = StreamingTopK(4, 6, largest=largest, dtype=torch.float64)
        part.update(scores[:, cols], cols)
        shards.append(part.result())
    values, indices = merge_topk(shards[::-1], 6, largest=largest)
    assert (values.tolist(), indices.tolist()) == want


def test_fewer_columns_than_k():
    top = StreamingTopK(2, 10, largest=True)
    top.update(torch.tensor([[1.0, 3.0, 2.0], [0.0, 0.0, -1.0]]), torch.tensor([5, 6, 7]))
    values, indices = top.result()
    assert indices.tolist() == [[6, 7, 5], [5, 6, 7]]
    assert values.tolist() == [[3.0, 2.0, 1.0], [0.0, 0.0, -1.0]]


def test_no_columns_yet():
    values, indices = StreamingTopK(3, 4, largest=False).result()
    assert values.shape == (3, 0) and indices.shape == (3, 0)
