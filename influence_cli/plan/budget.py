"""Over a budget: ``layers:`` and ``projection:`` settings that cut the cost, each measured like the
plan itself on a variant of the session (same weights and data, layout and gradient computer rebuilt).

- fewer layers (over any budget): the last L/2, L/4, ..., 1 selected layers, until one fits;
- a projection (over the memory budget): the largest K = 2^j whose bound fits. A projected layer
  holds at most min(D_l, K) numbers per example (exact when D_l ≤ K, k_e·k_a ≤ K for factors),
  so d ≤ s·Σ_l min(D_l, K) bounds its memory before it is measured. Not for a plan with a
  curvature fit (``ekfac``, ``arnoldi``): they need exact gradients.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import torch
from torch import nn

from influence_cli.gradients.layers import ParamLayout, select_parameters
from influence_cli.plan.results import Part, Plan, Suggestion
from influence_cli.recipe import ProjectionSpec
from influence_cli.session import Session

Measure = Callable[[Session], tuple[Part, ...]]


def variant(session: Session, settings: dict[str, Any]) -> Session:
    """The session with recipe ``settings`` changed (``layers``, ``projection``)."""
    recipe = session.recipe
    update = {"layers": settings.get("layers", recipe.layers),
              "projection": ProjectionSpec(**settings["projection"]) if "projection" in settings else recipe.projection}
    recipe = recipe.model_copy(update=update)
    return replace(session, recipe=recipe, layout=select_parameters(session.model, recipe.layers))


def _cover(module: nn.Module, prefix: str, chosen: set[str]) -> list[str]:
    """The module and parameter names under ``module`` that select exactly the parameters ``chosen``:
    a module all of whose trainable parameters are chosen is named whole."""
    names = {prefix + n for n, p in module.named_parameters() if p.requires_grad}
    if prefix and names and names <= chosen:
        return [prefix[:-1]]
    own = [prefix + n for n, _ in module.named_parameters(recurse=False) if prefix + n in chosen]
    return own + [e for name, child in module.named_children() for e in _cover(child, f"{prefix}{name}.", chosen)]


def last_layers(model: nn.Module, layout: ParamLayout, count: int) -> list[str]:
    """``layers:`` entries selecting exactly the last ``count`` layers of ``layout``, whole modules where
    they can (``layer4`` rather than its 15 layers)."""
    start = layout.slices[-count][0]
    offsets = torch.tensor((0, *layout.sizes)).cumsum(0).tolist()
    return _cover(model, "", {n for n, a in zip(layout.names, offsets) if a >= start})


def _trial(plan: Plan, session: Session, measure: Measure, settings: dict[str, Any]) -> Suggestion:
    """``settings`` measured like the plan itself."""
    tried = replace(plan, parts=measure(variant(session, settings)), suggestions=())
    return Suggestion(settings, tried.seconds, tried.memory_bytes, tried.store_bytes, tuple(tried.over_budget))


def _fewer_layers(plan: Plan, session: Session, measure: Measure) -> Suggestion | None:
    """The last L/2, L/4, ..., 1 selected layers, measured until one fits (else the last one tried)."""
    count, tried = len(session.layout.layer_names), None
    while count > 1 and (tried is None or not tried.fits):
        count //= 2
        tried = _trial(plan, session, measure, {"layers": last_layers(session.model, session.layout, count)})
    return tried


def _bounded(plan: Plan, k: int, itemsize: int) -> Plan:
    """The plan with every layer holding min(D_l, K) numbers per example: a bound of its projection to K."""
    def bound(part: Part) -> Part:
        layers = tuple(replace(x, numbers=min(x.parameters, k), bytes=itemsize * min(x.parameters, k))
                       for x in part.layers)
        return replace(part, layers=layers, query_example_bytes=sum(x.bytes for x in layers))
    return replace(plan, parts=tuple(bound(p) for p in plan.parts))


def _projection_dim(plan: Plan, itemsize: int) -> int | None:
    """The largest K = 2^j (16 ≤ K < max D_l) whose bound (:func:`_bounded`) fits the memory budget."""
    widest = max((x.parameters for p in plan.parts for x in p.layers), default=0)
    dims = (2**j for j in range(widest.bit_length() - 1, 3, -1))
    return next((k for k in dims if not {"memory", "store"} & set(_bounded(plan, k, itemsize).over_budget)), None)


def suggestions(plan: Plan, session: Session, measure: Measure) -> tuple[Suggestion, ...]:
    """Fewer layers (over any budget) and a projection (over the memory budget, not with a curvature
    fit), measured."""
    found = [_fewer_layers(plan, session, measure)]
    exact = any(p.fit is not None for p in plan.parts)  # ekfac, arnoldi refuse a projection
    if {"memory", "store"} & set(plan.over_budget) and not exact:
        dim = _projection_dim(plan, session.dtype.itemsize)
        found.append(None if dim is None else _trial(plan, session, measure, {"projection": {"dim": dim}}))
    return tuple(s for s in found if s is not None)
