"""Which parameters to differentiate, and how they group into layers.

``layers: null`` selects every trainable parameter. Otherwise each entry is a module or
parameter name, or an ``fnmatch`` glob over them (``classifier.*``, ``*.layer.11.*``); a module
selects all its parameters. A *layer* (the unit of GAS-L) is the module that owns a parameter:
``fc1.weight`` and ``fc1.bias`` form layer ``fc1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from torch import nn

from influence_cli.errors import RecipeError


@dataclass(frozen=True)
class ParamLayout:
    """Selected parameters in model order, their flat sizes, and their grouping into layers.

    The flat gradient of one example is the concatenation of the selected parameters'
    gradients in ``names`` order; layer ``l`` occupies columns ``slices[l]``.
    """

    names: tuple[str, ...]
    sizes: tuple[int, ...]
    layer_names: tuple[str, ...]
    slices: tuple[tuple[int, int], ...]

    @property
    def dim(self) -> int:
        return sum(self.sizes)


def _owner(param_name: str) -> str:
    """The module owning a parameter: ``fc1.weight`` → ``fc1``; the root module is ``""``."""
    return param_name.rpartition(".")[0]


def select_parameters(model: nn.Module, patterns: list[str] | None) -> ParamLayout:
    """The :class:`ParamLayout` for ``patterns`` (``None``: all trainable parameters)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if patterns is None:
        chosen = params
    else:
        def matches(name: str, pattern: str) -> bool:
            owner = name
            while owner:  # the parameter itself or any module that contains it
                if fnmatchcase(owner, pattern):
                    return True
                owner = owner.rpartition(".")[0]
            return False

        for pattern in patterns:
            if not any(matches(n, pattern) for n, _ in params):
                modules = sorted({_owner(n) or "(the model itself)" for n, _ in params})
                shown = ", ".join(modules[:8]) + (", ..." if len(modules) > 8 else "")
                raise RecipeError(f"layers: {pattern!r} matches no trainable module or parameter "
                                  f"of the model (modules: {shown})")
        chosen = [(n, p) for n, p in params if any(matches(n, pat) for pat in patterns)]
    if not chosen:
        raise RecipeError("layers: the model has no trainable parameters to differentiate")
    names = tuple(n for n, _ in chosen)
    sizes = tuple(p.numel() for _, p in chosen)
    layer_names: list[str] = []
    slices: list[tuple[int, int]] = []
    offset = 0
    for name, size in zip(names, sizes):
        owner = _owner(name)
        if layer_names and layer_names[-1] == owner and slices[-1][1] == offset:
            slices[-1] = (slices[-1][0], offset + size)
        else:
            layer_names.append(owner)
            slices.append((offset, offset + size))
        offset += size
    return ParamLayout(names, sizes, tuple(layer_names), tuple(slices))
