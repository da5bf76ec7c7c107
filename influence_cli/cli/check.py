"""``influence-cli check``: the recipe's ``checks:`` rules as a CI gate (exit 0 pass, 1 a rule fails)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from influence_cli import distributed
from influence_cli.audits.baseline import Baseline
from influence_cli.audits.check import check, checks_of, session_for, updated_baseline
from influence_cli.cli.common import (HtmlOpt, NoCacheOpt, OutOpt, QuietOpt, RecipeArg, checked_output_dir, console,
                                      err_console, progress_for, record_run, run_guarded, without_cache)
from influence_cli.errors import InfluenceError
from influence_cli.outputs import Target
from influence_cli.recipe import Recipe, load_recipe
from influence_cli.reports.check import append_step_summary, junit_xml, markdown, text_report, write_check_reports
from influence_cli.files import atomic_write


class Format(str, Enum):
    """What ``check`` prints on stdout."""

    TEXT = "text"
    JSON = "json"
    MARKDOWN = "markdown"


def check_command(
    recipe: RecipeArg,
    baseline: Annotated[Path | None, typer.Option(
        "--baseline", help="Baseline JSON of accepted flagged examples (default: the recipe's `checks.baseline`).",
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
    html: HtmlOpt = False,
    no_cache: NoCacheOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Evaluate the recipe's `checks:` rules (label errors, attack targets, new flags against a baseline).

    Exit code 0 when every rule passes, 1 when one fails, 2 for a usage or input error.
    """

    def body() -> bool:
        r, progress = without_cache(load_recipe(recipe), no_cache), progress_for(quiet or fmt is not Format.TEXT)
        spec = checks_of(r)
        path = baseline if baseline is not None else (r.resolve(spec.baseline) if spec.baseline else None)
        if update_baseline and path is None:
            raise InfluenceError("--update-baseline: give --baseline FILE or set `checks.baseline` in the recipe")
        accepted = Baseline.load(path) if path is not None and not update_baseline else None
        folder = _checked_outputs(r, out, junit, path, update=update_baseline,
                                  option="--baseline" if baseline is not None else "checks.baseline")
        session = session_for(r)
        result = check(session, baseline=accepted, need_mislabel=update_baseline, progress=progress)
        written = []
        if update_baseline:
            assert path is not None
            result = result.with_baseline(updated_baseline(result))
            written.append(result.baseline.save(path))  # type: ignore[union-attr]
        written += write_check_reports(result, folder)
        if junit is not None:
            written.append(atomic_write(junit, junit_xml(result)))
        summary = append_step_summary(result)
        main = distributed.is_main()  # under torchrun, rank 0 alone prints (`console` is muted elsewhere)
        if fmt is Format.JSON and main:
            typer.echo(json.dumps(result.to_dict(), indent=1))
        elif fmt is Format.MARKDOWN and main:
            typer.echo(markdown(result))
        elif fmt is Format.TEXT and not quiet:
            console.print(text_report(result))
        if summary is not None and not quiet:
            err_console.print(f"appended the summary to {summary}", highlight=False)
        record_run(folder, "check", r, progress, checkpoints=session.checkpoints, written=written,
                   html=html, quiet=quiet or fmt is not Format.TEXT)
        return result.passed

    if not run_guarded(body):
        raise typer.Exit(1)


def _checked_outputs(r: Recipe, out: Path | None, junit: Path | None, baseline: Path | None, *, update: bool,
                     option: str) -> Path:
    """Check every output (the report folder, ``--junit``, the baseline ``--update-baseline`` rewrites) before
    computing; a baseline that is only read is an input. Returns the report folder."""
    targets = [Target("--junit", junit, "junit")] if junit is not None else []
    if update and baseline is not None:
        targets.append(Target(option, baseline, "baseline"))
    reads = [(baseline, "the baseline")] if baseline is not None and not update else []
    return checked_output_dir(r, out, *targets, also_reads=reads)
