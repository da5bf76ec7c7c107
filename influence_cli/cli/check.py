"""``influence-cli check``: the recipe's ``checks:`` rules as a CI gate (exit 0 pass, 1 a rule fails)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from influence_cli.cli.common import HtmlOpt, NoCacheOpt, OutOpt, OverwriteOpt, QuietOpt, RecipeArg
from influence_cli.cli.common import checked_output_dir, console, finish, guarded, open_recipe, progress_for
from influence_cli.methods import Choice


class Format(Choice):
    """What ``check`` prints on stdout."""

    TEXT = "text"
    JSON = "json"
    MARKDOWN = "markdown"


@guarded
def check_command(
    recipe: RecipeArg,
    baseline: Annotated[Path | None, typer.Option(
        "--baseline", help="Baseline JSON of accepted flagged examples (default: the recipe's `checks.baseline`, "
        "empty until --update-baseline first writes it).",
        rich_help_panel="Baseline")] = None,
    update_baseline: Annotated[bool, typer.Option(
        "--update-baseline", help="Accept everything flagged now: rewrite the baseline file, then judge against it.",
        rich_help_panel="Baseline")] = False,
    junit: Annotated[Path | None, typer.Option(
        "--junit", help="Also write JUnit XML here: one test case per rule.", rich_help_panel="Output")] = None,
    fmt: Annotated[Format, typer.Option(
        "--format", help="stdout: a table (text), check.json's content (json) or the Markdown summary.",
        rich_help_panel="Output")] = Format.TEXT,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    html: HtmlOpt = False,
    no_cache: NoCacheOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Evaluate the recipe's `checks:` rules (label errors, attack targets, new flags against a baseline).

    Exit code 0 when every rule passes, 1 when one fails, 2 for a usage or input error.
    """
    from influence_cli.audits.baseline import FROM_RECIPE, baseline_file
    from influence_cli.audits.check import check, checks_of
    from influence_cli.outputs import Target
    from influence_cli.reports.check import markdown

    r, progress = open_recipe(recipe, no_cache), progress_for(quiet or fmt is not Format.TEXT)
    checks_of(r)  # a recipe without rules fails first, before any other question about it
    path = baseline_file(r, FROM_RECIPE if baseline is None else baseline)
    option = "--baseline" if baseline is not None else "checks.baseline"
    targets = [Target("--junit", junit, "junit")] if junit is not None else []
    if update_baseline and path is not None:
        targets.append(Target(option, path, "baseline"))
    reads = [(path, "the baseline")] if path is not None and not update_baseline else []
    folder = checked_output_dir(r, out, *targets, also_reads=reads, overwrite=overwrite)
    result = check(r, baseline=FROM_RECIPE if baseline is None else baseline, update_baseline=update_baseline,
                   progress=progress)
    finish(result, folder, progress, html=html, junit=junit, quiet=quiet or fmt is not Format.TEXT,
           overwrite=overwrite)
    if fmt is not Format.TEXT:  # on rank 0 only, like every print (`console`)
        text = json.dumps(result.to_dict(), indent=1) if fmt is Format.JSON else markdown(result)
        console.print(text, markup=False, highlight=False, soft_wrap=True)
    if not result.passed:
        raise typer.Exit(1)
