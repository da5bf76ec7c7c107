"""Selecting examples: index specs parsed once (CLI flags and recipe keys), index lists checked
against a split, labels as plain JSON values.

torch is imported by the functions that need it, so that parsing an index spec (``--help``, the
recipe) loads no PyTorch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from influence_cli.errors import ParameterError

if TYPE_CHECKING:
    import torch

#: How an index spec is written, for messages and help texts.
INDEX_FORMAT = "'0,3,7', '0:100' (end exclusive) or a mix ('0:10,15')"


def parse_indices(spec: str | None, parameter: str = "test_indices") -> list[int] | None:
    """``'0,3,7'``, ``'0:100'`` (end exclusive, ``':100'`` from 0) or a mix (``'0:10,15'``) as a list
    of ints, in the order written; ``None`` stays ``None``. Whether each index lies in its split is
    checked where the split is known (:func:`check_indices`).

    The one parser of index specs: ``--test-indices`` and the recipe's
    ``checks.no_attack_target.test_indices``/``candidates`` both use it. A part that is not an integer
    or a range is a :class:`ParameterError` naming ``parameter``."""
    if spec is None:
        return None
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if ":" in part:
                lo, _, hi = part.partition(":")
                out.extend(range(int(lo or 0), int(hi)))
            elif part:
                out.append(int(part))
        except ValueError:
            raise ParameterError(parameter, f"cannot read {part!r}; use {INDEX_FORMAT}") from None
    return out


def check_indices(indices: Sequence[int], n: int, parameter: str) -> torch.Tensor:
    """``indices`` as a tensor after checking each lies in [0, n); repeats are dropped (first kept).

    Errors name ``parameter`` (e.g. ``test_indices``; the CLI shows its flag)."""
    import torch

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
