"""The Typer application: one module per command, each a thin shell over the library API."""

from __future__ import annotations

import typer

from influence_cli.cli.check import check_command
from influence_cli.cli.demo import demo_command
from influence_cli.cli.evaluate import evaluate_command
from influence_cli.cli.mislabel import mislabel_command
from influence_cli.cli.plan import plan_command
from influence_cli.cli.report import report_command
from influence_cli.cli.score import score_command
from influence_cli.cli.target import target_command

app = typer.Typer(
    name="influence-cli",
    help="Audit PyTorch training data: influence (TracIn, GAS, GAS-L), mislabels, attack targets, CI checks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
# In the order a new user meets them: try it, estimate the cost, explain, measure the explanations,
# audit labels, audit attacks, gate CI, read.
app.command("demo")(demo_command)
app.command("plan")(plan_command)
app.command("score")(score_command)
app.command("evaluate")(evaluate_command)
app.command("mislabel-detect")(mislabel_command)
app.command("target-identify")(target_command)
app.command("check")(check_command)
app.command("report")(report_command)


def _version(value: bool) -> None:
    if value:
        from influence_cli.version import __version__

        typer.echo(f"influence-cli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Audit PyTorch training data: influence (TracIn, GAS, GAS-L), mislabels, attack targets, CI checks."""
