"""``influence-cli plan``: what a command will cost (layers, gradient paths, memory, time) before running it."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from influence_cli.cli.common import NoCacheOpt, RecipeArg, TestIndicesOpt, console, guarded, open_recipe
from influence_cli.methods import CURVATURE_METHODS, Choice, Method, MislabelMethod
from influence_cli.selection import parse_indices


class Command(Choice):
    """The command to plan (``influence_cli.plan.COMMANDS``)."""

    SCORE = "score"
    MISLABEL_DETECT = "mislabel-detect"
    TARGET_IDENTIFY = "target-identify"
    CHECK = "check"


class Format(Choice):
    """What ``plan`` prints on stdout."""

    TEXT = "text"
    JSON = "json"


def _names(kind: type[Method] | type[MislabelMethod]) -> str:
    """The methods of ``kind``, all of which plan estimates."""
    return ", ".join(str(m) for m in kind)


_CURVATURE = ", ".join(str(m) for m in CURVATURE_METHODS)

CommandOpt = Annotated[Command, typer.Option(help="The command whose run is estimated.")]
MethodOpt = Annotated[str | None, typer.Option(
    help=f"The command's estimator (default: its own). score, target-identify: {_names(Method)}; "
         f"mislabel-detect: {_names(MislabelMethod)}; check: from the recipe's `checks:`. The curvature "
         f"methods ({_CURVATURE}) add their fit: its passes over the training set and the curvature held.",
    show_default=False)]
BudgetMinutesOpt = Annotated[float | None, typer.Option(
    help="Time budget: over it, suggest `layers:`/`projection:` settings that fit.", show_default=False,
    rich_help_panel="Budget")]
BudgetGbOpt = Annotated[float | None, typer.Option(
    "--budget-gb", help="Memory budget in GiB (in memory, and the gradient store on disk): over it, suggest "
                        "settings that fit.", show_default=False, rich_help_panel="Budget")]
FormatOpt = Annotated[Format, typer.Option("--format", help="stdout: tables and YAML (text) or the plan as JSON.")]


@guarded
def plan_command(recipe: RecipeArg, command: CommandOpt = Command.SCORE, test_indices: TestIndicesOpt = None,
                 method: MethodOpt = None, budget_minutes: BudgetMinutesOpt = None, budget_gb: BudgetGbOpt = None,
                 fmt: FormatOpt = Format.TEXT, no_cache: NoCacheOpt = False) -> None:
    """Estimate a command's cost without running it: per layer the parameters, gradient path and per-example
    size; the memory (test side, one batch, gradient store; ekfac, arnoldi: the curvature); the time, from one
    timed batch per checkpoint (ekfac, arnoldi: their curvature fit too).
    """
    from influence_cli.plan import plan
    from influence_cli.reports.plan import plan_view

    result = plan(open_recipe(recipe, no_cache), command=str(command), test_indices=parse_indices(test_indices),
                  method=method, budget_minutes=budget_minutes, budget_gb=budget_gb)
    if fmt is Format.JSON:
        console.print(json.dumps(result.to_dict(), indent=1), markup=False, highlight=False, soft_wrap=True)
    else:
        console.print(plan_view(result))
