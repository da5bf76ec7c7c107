"""``influence-cli mislabel-detect``: rank training examples by how likely their label is wrong."""

from __future__ import annotations

from typing import Annotated

import typer

from influence_cli.cli.common import HtmlOpt, NoCacheOpt, OutOpt, OverwriteOpt, QuietOpt, RecipeArg
from influence_cli.cli.common import checked_output_dir, finish, guarded, open_recipe, progress_for
from influence_cli.methods import DEFAULT_MISLABEL_METHOD, MislabelMethod

MethodOpt = Annotated[MislabelMethod, typer.Option(
    help="tracin: Σ_c η_c‖g_c(z)‖² (all layers); tracin-last: the same on the last layer; aum: −mean margin "
         "over checkpoints; loss: loss at the last checkpoint; combined: mean robust z of aum and loss; "
         "ekfac: g(z)ᵀ(G + λI)⁻¹g(z) at the last checkpoint (EK-FAC curvature); arnoldi: the same over G's top "
         "eigenpairs.",
    rich_help_panel="Estimator")]
TopOpt = Annotated[int | None, typer.Option(
    "--top", help="Flag the K most suspicious examples.", show_default=False, rich_help_panel="Flagging")]
FractionOpt = Annotated[float | None, typer.Option(
    "--fraction", help="Flag the most suspicious fraction F of the training set, 0 < F ≤ 1.", show_default=False,
    rich_help_panel="Flagging")]


@guarded
def mislabel_command(recipe: RecipeArg, method: MethodOpt = DEFAULT_MISLABEL_METHOD, top: TopOpt = None,
                     fraction: FractionOpt = None, no_cache: NoCacheOpt = False, out: OutOpt = None,
                     overwrite: OverwriteOpt = False, html: HtmlOpt = False, quiet: QuietOpt = False) -> None:
    """Rank every training example by how likely its label is wrong; suggest the label the model prefers.

    Without --top or --fraction, the automatic cut flags outliers (robust z-score > 3 and a negative mean margin).
    """
    r, progress = open_recipe(recipe, no_cache), progress_for(quiet)
    folder = checked_output_dir(r, out, overwrite=overwrite)
    from influence_cli.audits.mislabel import mislabel_detect  # the library (and torch) once the inputs are checked

    result = mislabel_detect(r, method=method, top=top, fraction=fraction, progress=progress)
    finish(result, folder, progress, html=html, quiet=quiet, overwrite=overwrite)
