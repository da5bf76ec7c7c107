"""``influence-cli report``: render the HTML report of an output folder."""

from __future__ import annotations

import webbrowser
from pathlib import Path
from typing import Annotated

import typer

from influence_cli.cli.common import QuietOpt, echo_written, guarded


@guarded
def report_command(
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="An output folder written by score, mislabel-detect, "
                                           "target-identify, check, or the demo (its audit/).", show_default=False)],
    recipe: Annotated[Path | None, typer.Option(
        "--recipe", metavar="RECIPE", help="Re-read the inputs for thumbnails through this recipe (trusted, like "
        "any recipe you run). Default: the recipe recorded in DIR, unless re-reading it would run code "
        "(format: factory).", show_default=False)] = None,
    open_: Annotated[bool, typer.Option("--open", help="Open the report in the default web browser.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Render DIR/report.html: one self-contained page (inputs, galleries, plots, recipe, timings)."""
    from influence_cli.recipe import load_recipe
    from influence_cli.reports.html import write_report

    path = write_report(folder, load_recipe(recipe) if recipe is not None else None)
    echo_written([path], quiet)
    if open_:
        webbrowser.open(path.resolve().as_uri())
