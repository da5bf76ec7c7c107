"""``influence-cli report``: render the HTML report of an output folder."""

from __future__ import annotations

import webbrowser
from pathlib import Path
from typing import Annotated

import typer

from influence_cli.cli.common import QuietOpt, echo_written, run_guarded
from influence_cli.reports.html import write_report


def report_command(
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="An output folder written by score, mislabel-detect, "
                                           "target-identify, check, or the demo (its audit/).", show_default=False)],
    open_: Annotated[bool, typer.Option("--open", help="Open the report in the default web browser.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Render DIR/report.html: one self-contained page (inputs, galleries, plots, recipe, timings)."""

    def body() -> None:
        path = write_report(folder)
        echo_written([path], quiet)
        if open_:
            webbrowser.open(path.resolve().as_uri())

    run_guarded(body)
