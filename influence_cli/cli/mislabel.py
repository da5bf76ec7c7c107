"""``influence-cli mislabel-detect``: rank training examples by how likely their label is wrong."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from influence_cli.audits.mislabel import DEFAULT_METHOD, MislabelMethod, MislabelResult, mislabel_detect
from influence_cli.cli.common import (HtmlOpt, NoCacheOpt, OutOpt, QuietOpt, RecipeArg, checked_output_dir, console,
                                      progress_for, record_run, run_guarded, without_cache)
from influence_cli.recipe import load_recipe
from influence_cli.reports.mislabel import write_mislabel_reports

MethodOpt = Annotated[MislabelMethod, typer.Option(
    help="tracin: Σ_c η_c‖g_c(z)‖² (all layers); tracin-last: the same on the last layer; aum: −mean margin "
         "over checkpoints; loss: loss at the last checkpoint; combined: mean robust z of tracin-last, aum, loss.",
    rich_help_panel="Estimator")]
TopOpt = Annotated[int | None, typer.Option(
    "--top", help="Flag the K most suspicious examples.", show_default=False, rich_help_panel="Flagging")]
FractionOpt = Annotated[float | None, typer.Option(
    "--fraction", help="Flag the most suspicious fraction F of the training set, 0 < F ≤ 1.", show_default=False,
    rich_help_panel="Flagging")]


def mislabel_command(recipe: RecipeArg, method: MethodOpt = DEFAULT_METHOD, top: TopOpt = None,
                     fraction: FractionOpt = None, no_cache: NoCacheOpt = False, out: OutOpt = None,
                     html: HtmlOpt = False, quiet: QuietOpt = False) -> None:
    """Rank every training example by how likely its label is wrong; suggest the label the model prefers.

    Without --top or --fraction, examples whose robust z-score exceeds 3.5 are flagged.
    """

    def body() -> None:
        r, progress = without_cache(load_recipe(recipe), no_cache), progress_for(quiet)
        folder = checked_output_dir(r, out)
        result = mislabel_detect(r, method=method, top=top, fraction=fraction, progress=progress)
        written = write_mislabel_reports(result, folder)
        if not quiet:
            console.print(suspects_table(result))
        record_run(folder, "mislabel-detect", r, progress, checkpoints=result.session.checkpoints,
                   html=html, written=written, quiet=quiet)

    run_guarded(body)


def suspects_table(result: MislabelResult, rows: int = 15) -> Table:
    """The most suspicious examples as a rich table."""
    data = result.to_dict()
    table = Table(title=f"Suspected mislabels ({data['method']}): {data['n_flagged']} of {data['n_train']} flagged, "
                        f"top {min(rows, data['n_train'])} shown")
    for col in ("rank", "train index", "score", "given", "suggested (prob)", "flagged"):
        table.add_column(col)
    for e in data["ranking"][:rows]:
        table.add_row(str(e["rank"]), str(e["train_index"]), f"{e['score']:.4g}", str(e["given_label"]),
                      f"{e['suggested_label']} ({e['suggested_prob']:.2f})", "yes" if e["flagged"] else "")
    return table
