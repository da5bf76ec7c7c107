"""``influence-cli evaluate``: the linear datamodeling score (LDS) of influence methods, by retraining."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from influence_cli.cli.common import OutOpt, OverwriteOpt, QuietOpt, RecipeArg, checked_output_dir, console
from influence_cli.cli.common import echo_written, guarded, open_recipe, progress_for, run_summary
from influence_cli.errors import ParameterError
from influence_cli.selection import INDEX_FORMAT, parse_indices

if TYPE_CHECKING:
    from influence_cli.audits.lds import LDSResult

#: The method names (influence_cli.audits.lds.LDS_METHODS, spelled here so that --help loads no torch).
_METHODS = "tracin, gas, gas-l, ekfac, arnoldi, loss, random"


@guarded
def evaluate_command(
    recipe: RecipeArg,
    train: Annotated[str, typer.Option(
        "--train", help="Your training function, FILE.py:FUNCTION (FILE relative to the recipe) or "
                        "package.module:FUNCTION: train(indices, seed) gets the sorted int64 training indices of a "
                        "subset and returns the trained nn.Module or its state dict.",
        show_default=False, rich_help_panel="Retraining")],
    subsets: Annotated[int, typer.Option(min=3, help="S, the random subsets retrained.",
                                         rich_help_panel="Retraining")] = 50,
    fraction: Annotated[float, typer.Option(help="α, each subset's share of the training set.",
                                            rich_help_panel="Retraining")] = 0.5,
    seed: Annotated[int, typer.Option(help="Seeds the subset draws and the random baseline; passed to every "
                                           "train call.", rich_help_panel="Retraining")] = 0,
    methods: Annotated[list[str] | None, typer.Option(
        "--methods", "-m", help=f"Methods to evaluate, repeated or comma-separated: {_METHODS} (loss and random "
                                "are baselines). Default: all.", show_default=False,
        rich_help_panel="Estimator")] = None,
    test_indices: Annotated[str | None, typer.Option(
        "--test-indices", help=f"Test examples: {INDEX_FORMAT}. Default: the first 100.",
        rich_help_panel="Selection")] = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Measure how well each method predicts retraining: the linear datamodeling score (LDS) over random subsets.

    Retrains your model on S random subsets of the training set with your --train function, then ranks, for each
    test example, the subsets by each method's predicted effect Σ_{j∈S} τ_ij and by the retrained test loss:
    LDS is their Spearman correlation (1: perfect, 0: no better than chance). Each subset's losses are kept in
    DIR/lds-subsets/, so an interrupted run resumes.
    """
    r, progress = open_recipe(recipe), progress_for(quiet)
    if not 0 < fraction < 1:  # usage errors before torch loads (the library checks them again)
        raise ParameterError("fraction", f"must lie strictly between 0 and 1, got {fraction}")
    names = [m.strip() for spec in methods for m in spec.split(",") if m.strip()] if methods else None
    unknown = [m for m in names or () if m not in _METHODS.split(", ")]
    if unknown:
        raise ParameterError("methods", f"unknown choice {unknown[0]!r} (choose from {_METHODS})")
    indices = parse_indices(test_indices)
    folder = checked_output_dir(r, out, overwrite=overwrite)
    from influence_cli.loading.imports import import_callable

    train_fn = import_callable(train, base_dir=Path(r.base_dir), key="--train")
    from influence_cli.audits.lds import LDS_METHODS, evaluate  # the library (and torch) once the inputs are checked
    from influence_cli.reports.run_info import check_same_inputs, clear_reports, write_run_info

    if check_same_inputs(folder, r, overwrite=overwrite, option="--out"):
        clear_reports(folder)  # another run's results (and retrained subsets): replaced before this run adds its own
    result = evaluate(r, train_fn, methods=names or LDS_METHODS, subsets=subsets, fraction=fraction,
                      test_indices=indices, seed=seed, out=folder, overwrite=overwrite, progress=progress)
    paths = result.write(folder)
    paths.append(write_run_info(folder, "evaluate", r, seconds=progress.seconds, checkpoints=result.session.checkpoints,
                                tasks=progress.timings))
    if not quiet:
        console.print(lds_table(result))
        console.print(run_summary("evaluate", progress.timings, progress.seconds, result.session.checkpoints))
        console.print(f"recipe {r.source}", highlight=False, soft_wrap=True)
        echo_written(paths, quiet)


def lds_table(result: "LDSResult") -> Table:
    """The LDS of each method as a rich table."""
    d = result.to_dict()
    reused = f", {d['retrain']['reused']} read back" if d["retrain"]["reused"] else ""
    table = Table(title=f"LDS: S = {d['subsets']} subsets ({d['retrain']['trained']} retrained{reused}), "
                        f"α = {d['fraction']}, M = {len(d['test_indices'])} test examples")
    for col in ("method", "mean LDS", "std over test examples", "seconds"):
        table.add_column(col)
    for m in d["methods"]:
        if m["skipped"] is None:
            table.add_row(m["method"], f"{m['mean_lds']:.3f}", f"{m['std_lds']:.3f}", f"{m['seconds']:.1f}")
        else:
            table.add_row(m["method"], f"skipped: {escape(m['skipped'])}", "", f"{m['seconds']:.1f}")
    return table
