"""``plan``: what a run will cost, measured on one batch per checkpoint instead of the whole run.

For the command it plans (``score``, ``mislabel-detect``, ``target-identify``, ``check``) a :class:`Plan`
gives, per gradient pass (:class:`Part`): every selected layer's parameters D_l, the path its per-example
gradient takes (the engine's own choice: ``factorised``, ``materialised``, ``norm hooks`` or
``torch.func``, then the projection, if any) and what one example holds there; the memory; and the
time. Every number comes from the engine's own work (:func:`~influence_cli.engine.weighted_batch`) on real
batches (:mod:`influence_cli.plan.measure`), so the layer paths and sizes are the ones the run uses.

Notation: C checkpoints, M query (test) examples, N training examples, B the batch size, P the
model's parameters, s the bytes of a gradient number and s′ of a score, d the bytes one example's
weighted gradient holds: d = Σ_l d_l, with T·(d_in+q) numbers for a factor pair (ã's bias 1 is not
stored), D_l for a dense block, k_l for a projected one. The curvature methods ``ekfac`` and
``arnoldi`` sum over C′ checkpoint terms (:func:`~influence_cli.engine.checkpoint_terms`: the final
checkpoint, C′ = 1, unless ``curvature: {checkpoints: all}``) instead of C, and hold P g, d = s·D,
per test example. Memory:

    weights  = C·P·s             every checkpoint's weights stay loaded
    fit      = C′·F·s            ekfac, arnoldi: the curvature, held for the whole pass
    query    = C·M·d             the test gradients, held for the whole training pass (over the budget,
                                 ``memory_gb`` or half the free memory: M′ = ⌊budget / (C·d)⌋ at a time,
                                 one training pass per chunk of M′, as the engine splits them)
    batch    = B·d + M·B·s′      one training batch's gradients and its score block
    store    = C·N·d             on disk, with ``cache_dir`` (what the first run writes)

with F = Σ_l (p_l² + q_l² + q_l·p_l) + Σ_l′ D_l′ for ``ekfac`` (Q_A, Q_S and Λ* of each factored
layer of p inputs (+1 for a bias) and q outputs, a diagonal for the others; s the run's) and
F = D·(I + 1) for ``arnoldi``'s Krylov basis (I iterations, the recipe's ``curvature.iterations`` or
2 × ``eigenpairs``; s at least float32's 4 bytes; after the fit only its D·p eigenvectors stay, so
this bounds the pass from above).

Time: after one untimed warm-up batch, one timed batch per checkpoint and side (b_q ≤ B test and
b ≤ B training examples; t_load reads the batch and moves it to the device), extrapolated:

    curvature fit    C′ · ((N / b) · passes · t_batch + t_fixed)  (ekfac, arnoldi)
    test gradients   (M / b_q) · Σ_c (t_load + t_c)
    train gradients  ⌈M / M′⌉ · (N / b) · (t_load + Σ_c (t_c + (M / b_q) · t_c(dot)) + (M / b_q) · t(merges))
    forward passes   (N / b) · Σ_c t_c(forward)                  (mislabel-detect's margins and losses)
    predictions      (M / b_q) · t(forward)                      (the final model's, on the test side)

The curvature fit runs the fitting code of :mod:`influence_cli.curvature` on the measured batch
(:mod:`influence_cli.plan.measure`). ``ekfac``: passes = 2, t_batch = t_load + the mean of its two
passes' seconds on the batch (a no-grad forward drawing the labels, then the factorised gradients with
the factor sums Σ ã ãᵀ, Σ e eᵀ; again a forward, then the gradients rotated into the eigenbases), and
t_fixed the rest of the fit (the eigendecompositions, p³ + q³ per layer, at the real sizes).
``arnoldi``: passes = I, t_batch = t_load + one Gauss-Newton-vector product (jvp, vjp) over the batch,
t_fixed = I (I + 1) / 2 Gram-Schmidt steps on D numbers. The passes after the fit are measured with a
preconditioner fitted on the batch (``ekfac``; ``arnoldi``: p unit directions, its cost being its
shape's), t_c then includes P g.

The training pass dominates, or, for ``arnoldi``, its I-pass fit. t(merges) merges the score block
into the streaming top-k and bottom-k lists. Every checkpoint does the same work, so Σ_c t_c is taken
as C · min_c t_c, the steadiest measure on shared cores. Not counted: loading the recipe
(``load_seconds`` when a recipe is given) and writing or reading the gradient store (with
``cache_dir`` a curvature fit stored by an earlier run is read back instead of fitted). Over a
budget, :class:`Suggestion` s give ``layers:`` and ``projection: {dim: K}`` settings (no projection
for ``ekfac``, ``arnoldi``), each measured the same way (:mod:`influence_cli.plan.budget`).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Sequence

from influence_cli.audits.check import Need, checks_of, rules_of
from influence_cli.engine import available_memory
from influence_cli.errors import ParameterError
from influence_cli.methods import DEFAULT_MISLABEL_METHOD, Method, MislabelMethod, choose
from influence_cli.plan.budget import suggestions
from influence_cli.plan.measure import jobs, measure
from influence_cli.plan.results import GIB, Fit, LayerPlan, Part, Plan, Stage, Suggestion
from influence_cli.recipe import Recipe
from influence_cli.session import Session

__all__ = ["COMMANDS", "Fit", "LayerPlan", "Part", "Plan", "Stage", "Suggestion", "plan"]

#: The commands :func:`plan` estimates (the CLI's names).
COMMANDS = ("score", "mislabel-detect", "target-identify", "check")


def _method(command: str, method: str | None, test_indices: Sequence[int] | None) -> Method | MislabelMethod | None:
    """The command's estimator (its default when ``None``); refuses options the command does not take."""
    if command not in COMMANDS:
        raise ParameterError("command", f"unknown choice {command!r} (choose from {', '.join(COMMANDS)})")
    if test_indices is not None and command in ("mislabel-detect", "check"):
        raise ParameterError("test_indices", f"{command} has no test side to select")
    if command == "check":
        if method is not None:
            raise ParameterError("method", "check takes its methods from the recipe's `checks:` section")
        return None
    if command == "mislabel-detect":
        chosen: Method | MislabelMethod = choose(MislabelMethod, method or DEFAULT_MISLABEL_METHOD, "method")
    else:
        chosen = choose(Method, method or (Method.GAS_L if command == "target-identify" else Method.TRACIN), "method")
    return chosen


def _positive(value: float | None, parameter: str) -> None:
    if value is not None and not value > 0:
        raise ParameterError(parameter, f"must be positive, got {value}")


def plan(recipe_or_session: Recipe | Session, *, command: str = "score", test_indices: Sequence[int] | None = None,
         method: str | None = None, budget_minutes: float | None = None, budget_gb: float | None = None) -> Plan:
    """Estimate what ``command`` (one of :data:`COMMANDS`, with its ``test_indices`` and ``method``)
    costs on this recipe, from one timed batch per checkpoint and side (the formulas: module
    docstring). Over ``budget_minutes`` of time or ``budget_gb`` GiB (2^30 bytes) of memory or
    store, ``suggestions`` hold measured ``layers:``/``projection:`` settings."""
    resolved = _method(command, method, test_indices)
    _positive(budget_minutes, "budget_minutes")
    _positive(budget_gb, "budget_gb")
    recipe = recipe_or_session.recipe if isinstance(recipe_or_session, Session) else recipe_or_session
    needs_test = command in ("score", "target-identify") or (
        command == "check" and any(Need.TARGET in r.needs for r in rules_of(checks_of(recipe))))
    start = time.perf_counter()
    session = Session.of(recipe_or_session, need_test=needs_test)
    loaded = None if session is recipe_or_session else time.perf_counter() - start

    def measured(s: Session) -> tuple[Part, ...]:
        return tuple(measure(job) for job in jobs(s, command, resolved, test_indices))

    weights = sum(t.nbytes for w in session.weights for t in w.values())
    result = Plan(command, len(session.weights), session.recipe.batch_size, str(session.device), session.recipe.dtype,
                  weights, measured(session), available_memory(session.device), loaded,
                  None if budget_minutes is None else 60 * budget_minutes,
                  None if budget_gb is None else GIB * budget_gb)
    return replace(result, suggestions=suggestions(result, session, measured)) if result.over_budget else result
