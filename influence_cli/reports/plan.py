"""What ``influence-cli plan`` prints: per gradient pass a table of the selected layers (parameters, the
path of their per-example gradients, what one example holds), the memory and time estimates with their
formulas (``ekfac``, ``arnoldi``: their curvature fit's too), and, over a budget, the suggested recipe
settings as YAML to paste."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from influence_cli.plan import Fit, Part, Plan, Suggestion

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def size(n: float) -> str:
    """Bytes in binary units: ``512 B``, ``1.5 KiB``, ``2.0 GiB``."""
    unit = 0
    while n >= 1024 and unit < len(_UNITS) - 1:
        n, unit = n / 1024, unit + 1
    return f"{n:.0f} {_UNITS[unit]}" if unit == 0 else f"{n:.1f} {_UNITS[unit]}"


def duration(seconds: float) -> str:
    """``0.42 s``, ``12.3 s``, ``4.5 min``, ``2.1 h``."""
    if seconds < 60:
        return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def layers_table(part: Part) -> Table:
    """The selected layers of one pass: parameters D_l, path, projection, numbers and bytes per example."""
    projected = any(x.projection is not None for x in part.layers)
    table = Table(title=f"{part.label}: {len(part.layers)} layer{'s' if len(part.layers) != 1 else ''}", title_justify="left")
    for col in ("layer", "parameters", "path", *(("projection",) if projected else ()), "per example", "bytes"):
        table.add_column(col, justify="right" if col in ("parameters", "per example", "bytes") else "left")
    for x in part.layers:
        table.add_row(x.name, f"{x.parameters:,}", x.path, *((x.projection or "",) if projected else ()),
                      f"{x.numbers:,}", size(x.bytes))
    table.add_section()
    table.add_row("total", f"{sum(x.parameters for x in part.layers):,}", "", *(("",) if projected else ()),
                  f"{sum(x.numbers for x in part.layers):,}", size(part.example_bytes))
    return table


def memory_table(plan: Plan) -> Table:
    """Weights, each pass's test side and training batch, the peak in memory and the store on disk."""
    table = Table(title="Memory", title_justify="left")
    for col in ("", "formula", "size"):
        table.add_column(col, justify="right" if col == "size" else "left")
    table.add_row("weights", "C·P·s", size(plan.weights_bytes))
    for part in (p for p in plan.parts if p.layers):
        prefix = f"{part.label}: " if len(plan.parts) > 1 else ""
        if part.fit is not None:
            fit = part.fit
            formula = f"C′·({fit.memory})·s = {fit.terms} × {fit.numbers:,} × {fit.itemsize} B"
            table.add_row(f"{prefix}curvature ({fit.method})", formula, size(fit.bytes))
        if part.queries:
            held = (f"{part.held_queries:,} of {part.queries:,} at a time (over the budget: one training pass per "
                    "chunk)" if part.chunk else f"{part.queries:,}")
            table.add_row(f"{prefix}test side", f"C·M·d = {part.checkpoints} × {held} × "
                          f"{size(part.query_example_bytes)}", size(part.query_bytes))
        table.add_row(f"{prefix}one training batch", f"B·d + M·B·s′ = {part.batch} × {size(part.example_bytes)} + "
                      f"{part.held_queries:,} × {part.batch} × {part.score_itemsize} B", size(part.batch_bytes))
    free = "" if plan.available_bytes is None else f" of {size(plan.available_bytes)} free"
    table.add_section()
    curvature = "curvature + " if any(p.fit for p in plan.parts) else ""
    table.add_row("in memory", f"weights + {curvature}test side + batch", size(plan.memory_bytes) + free)
    stored = [p for p in plan.parts if p.stored]
    for part in stored:
        table.add_row("gradient store (disk)", f"C·N·d = {part.checkpoints} × {part.train:,} × "
                      f"{size(part.example_bytes)}", size(part.store_bytes))
    if not stored:
        table.add_row("gradient store (disk)", "none (no cache_dir)", "")
    return table


def time_table(plan: Plan) -> Table:
    """Each stage's examples × checkpoints and estimated time, and the total."""
    table = Table(title="Time (one timed batch per checkpoint, extrapolated)", title_justify="left")
    for col in ("stage", "examples × checkpoints", "estimate"):
        table.add_column(col, justify="right" if col == "estimate" else "left")
    for part in plan.parts:
        prefix = f"{part.label}: " if len(plan.parts) > 1 else ""
        for stage in part.stages:
            passes = f"{stage.passes} passes × " if stage.passes > 1 else ""
            table.add_row(prefix + stage.name, f"{passes}{stage.examples:,} × {stage.checkpoints}",
                          duration(stage.seconds))
    table.add_section()
    table.add_row("total", "", duration(plan.seconds))
    if plan.load_seconds is not None:
        table.add_row("(loading the recipe, measured)", "", duration(plan.load_seconds))
    return table


def fit_formula(fit: Fit) -> str:
    """The curvature fit's time: C′·((N/b)·passes·t_batch + t_fixed), with the measured numbers."""
    fixed = "eigendecompositions" if fit.method == "ekfac" else "Gram-Schmidt"
    return (f"curvature fit ({fit.method}): C′·((N / b)·passes·t_batch + t_{fixed}) = {fit.terms} × "
            f"({fit.train:,} / {fit.batch} × {fit.passes} × {fit.batch_seconds:.3g} s + {fit.fixed_seconds:.3g} s) = "
            f"{duration(fit.seconds)}")


def _budget(plan: Plan) -> str:
    limits = [duration(plan.budget_seconds) if plan.budget_seconds is not None else None,
              size(plan.budget_bytes) if plan.budget_bytes is not None else None]
    verdict = f"over in {', '.join(plan.over_budget)}" if plan.over_budget else "within"
    if plan.budget_bytes is not None and plan.weights_bytes > plan.budget_bytes:
        verdict += "; the checkpoints' weights alone exceed it, whatever `layers:` or `projection:` say"
    return f"budget {' and '.join(x for x in limits if x)}: {verdict}"


def _suggestion(s: Suggestion) -> RenderableType:
    verdict = "fits the budget" if s.fits else f"the closest tried, still over in {', '.join(s.over_budget)}"
    note = (f"# {verdict}: {duration(s.seconds)}, {size(s.memory_bytes)} in memory"
            + (f", {size(s.store_bytes)} stored" if s.store_bytes else ""))
    return Text(f"{note}\n{s.yaml.rstrip()}", no_wrap=True, overflow="ignore")  # never broken: pasted as YAML


def plan_view(plan: Plan) -> RenderableType:
    """Everything ``influence-cli plan`` prints for ``plan``."""
    head = Text(f"plan for {plan.command}: {plan.checkpoints} checkpoint(s), batch size {plan.batch_size}, "
                f"{plan.device}, {plan.dtype}")
    parts: list[RenderableType] = [head, *(layers_table(p) for p in plan.parts if p.layers),
                                   memory_table(plan), time_table(plan)]
    parts += [Text(fit_formula(p.fit)) for p in plan.parts if p.fit is not None]
    if plan.budget_seconds is not None or plan.budget_bytes is not None:
        parts.append(Text(_budget(plan), style="bold red" if plan.over_budget else "bold green"))
    if plan.suggestions:
        parts.append(Text("Suggested recipe settings:"))
        parts += [_suggestion(s) for s in plan.suggestions]
    return Group(*parts)
