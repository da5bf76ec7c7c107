"""What every command shares: option types, the error boundary, the consoles, progress bars and
the end of a run (write the reports, print the summary).

Nothing here imports torch, transformers or matplotlib at module level: ``--help``, ``--version``
and usage errors stay fast; each command imports the library when it runs.
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Callable,
    Iterator,
    ParamSpec,
    Sequence,
    TypeVar,
)

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichBars

from influence_cli.errors import InfluenceError, ParameterError
from influence_cli.progress import Advance, LogProgress, TaskTiming, TimedProgress
from influence_cli.selection import INDEX_FORMAT

if TYPE_CHECKING:
    from influence_cli.outputs import Target
    from influence_cli.recipe import Recipe
    from influence_cli.reports.writer import Result


def _main_rank() -> bool:
    """Rank 0 (or no torchrun): read from the environment, before the process group exists."""
    return os.environ.get("RANK", "0") in ("", "0")


console = Console(quiet=not _main_rank())  # under torchrun only rank 0 prints results; errors: all
err_console = Console(stderr=True)

RecipeArg = Annotated[Path, typer.Argument(help="The recipe YAML file.", show_default=False)]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default: the recipe's `output`).",
                                             rich_help_panel="Output")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or tables.", rich_help_panel="Output")]
TestIndicesOpt = Annotated[str | None, typer.Option(
    "--test-indices", help=f"Test examples to explain: {INDEX_FORMAT}. Default: all.",
    rich_help_panel="Selection")]
OverwriteOpt = Annotated[bool, typer.Option(
    "--overwrite", help="Write into an output folder that holds results of another recipe or other data.",
    rich_help_panel="Output")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Ignore the recipe's `cache_dir`: compute every "
                                          "training gradient, read and write no store.", rich_help_panel="Performance")]

T = TypeVar("T")
P = ParamSpec("P")


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      file: object = None, line: str | None = None) -> None:
    """Warnings (a halved batch, the one-at-a-time gradient fallback) as one stderr line."""
    err_console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


#: Library parameters whose flag is not ``--`` + the name with dashes.
FLAGS = {"k": "--top-k"}


def flag(parameter: str) -> str:
    """The CLI flag of a library parameter (``test_indices`` → ``--test-indices``)."""
    return FLAGS.get(parameter, "--" + parameter.replace("_", "-"))


def cli_message(exc: InfluenceError) -> str:
    """The error's message as the CLI user sees it: the library parameter it names, and any other
    parameter its detail names in backticks (`fraction`), become flags."""
    if isinstance(exc, ParameterError):
        detail = re.sub(r"`(\w+)`", lambda m: flag(m.group(1)), exc.detail)
        return f"{flag(exc.parameter)}: {detail}"
    return exc.message


def guarded(command: Callable[P, T]) -> Callable[P, T]:
    """Wrap a command: domain errors become one stderr line and an exit code, never a traceback.

    Exit codes: 0 clean, 1 findings (checks), 2 usage or input error, 3 internal error,
    130 interrupted. ``INFLUENCE_CLI_DEBUG=1`` re-raises internal errors with their traceback.
    Under ``torchrun`` it first joins the process group (:func:`influence_cli.distributed.init`).
    """

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _one_line_warning
                if os.environ.get("WORLD_SIZE", "1") not in ("", "1"):  # under torchrun; else torch loads later
                    from influence_cli import distributed

                    distributed.init()
                return command(*args, **kwargs)
        except InfluenceError as exc:
            err_console.print(f"[bold red]error:[/] {escape(cli_message(exc))}", markup=True, highlight=False,
                              soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted; reports are written atomically, so none is half-written")
            raise typer.Exit(130) from None
        except typer.Exit:
            raise
        except Exception as exc:  # a bug: one line, unless debugging
            if os.environ.get("INFLUENCE_CLI_DEBUG"):
                raise
            err_console.print(f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))} "
                              "(set INFLUENCE_CLI_DEBUG=1 for the traceback)", highlight=False, soft_wrap=True)
            raise typer.Exit(3) from None

    return run


def open_recipe(path: Path, no_cache: bool = False) -> "Recipe":
    """The recipe at ``path``; with ``--no-cache``, without its ``cache_dir``."""
    from influence_cli.recipe import load_recipe

    recipe = load_recipe(path)
    return recipe.model_copy(update={"cache_dir": None}) if no_cache else recipe


def output_dir(recipe: "Recipe", out: Path | None) -> Path:
    """``--out`` if given (relative to the working directory), else the recipe's ``output``
    (relative to the recipe file)."""
    return out if out is not None else recipe.resolve(recipe.output)


def checked_output_dir(recipe: "Recipe", out: Path | None, *files: "Target",
                       also_reads: Sequence[tuple[Path, str]] = (), overwrite: bool = False) -> Path:
    """The output folder (:func:`output_dir`), once it and the other outputs ``files`` have passed
    :func:`~influence_cli.outputs.guard_outputs` and the folder holds no other run's results
    (:func:`~influence_cli.reports.run_info.check_same_inputs`): call it before computing anything."""
    from influence_cli.outputs import Target, guard_outputs
    from influence_cli.reports.run_info import check_same_inputs

    folder = output_dir(recipe, out)
    option = "--out" if out is not None else "output"
    guard_outputs(recipe, [Target(option, folder), *files], also_reads)
    check_same_inputs(folder, recipe, overwrite=overwrite, option=option)
    return folder


class Bars:
    """Progress on stderr: bars with ETA on a terminal; otherwise (CI, ``nohup``) plain lines with
    done/total, rate and ETA every ``$INFLUENCE_CLI_PROGRESS_SECONDS`` (default 15) and one per finished
    task (:class:`~influence_cli.progress.LogProgress`); nothing with ``show=False`` (``--quiet``)."""

    def __init__(self, show: bool = True) -> None:
        self.show = show
        self.interactive = err_console.is_terminal
        self.log = None if self.interactive or not show else LogProgress(
            lambda line: err_console.print(line, highlight=False, soft_wrap=True))

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        if not self.show:
            yield lambda n: None
        elif self.log is not None:
            with self.log.task(description, total) as advance:
                yield advance
        else:
            bars = RichBars(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=True)
            with bars:
                task_id = bars.add_task(description, total=total)
                yield lambda n: bars.advance(task_id, n)


def progress_for(quiet: bool) -> TimedProgress:
    """The command's progress: :class:`Bars` (shown unless ``quiet``, on rank 0 only), each task's wall
    time recorded for run.json and the summary."""
    return TimedProgress(Bars(show=not quiet and _main_rank()))


HtmlOpt = Annotated[bool, typer.Option("--html", help="Also render DIR/report.html (same as `influence-cli report DIR`).",
                                       rich_help_panel="Output")]


def finish(result: "Result", out: Path, progress: TimedProgress, *, html: bool = False, quiet: bool = False,
           junit: Path | None = None, show: bool = True, overwrite: bool = False) -> list[Path]:
    """The shared end of every command: :func:`~influence_cli.reports.writer.write_reports` (reports,
    run.json, report.html with ``--html``), then, unless ``quiet``, the result's table (when ``show``),
    a one-screen summary and every path written. Returns the paths written."""
    from influence_cli.reports.writer import command_of, terminal_view, write_reports

    seconds = progress.seconds
    paths = write_reports(result, out, html=html, junit=junit, seconds=seconds, tasks=progress.timings,
                          overwrite=overwrite)  # refused before computing already (checked_output_dir)
    if not quiet:
        if show:
            console.print(terminal_view(result))
        session = result.session
        console.print(run_summary(command_of(result), progress.timings, seconds, session.checkpoints))
        console.print(f"recipe {session.recipe.source}", highlight=False, soft_wrap=True)
        echo_written(paths, quiet)
        if html:
            console.print(f"report {(out / 'report.html').resolve().as_uri()}", highlight=False, soft_wrap=True)
    return paths


def run_summary(command: str, tasks: Sequence[TaskTiming], seconds: float, checkpoints: Sequence[Any]) -> Panel:
    """A short panel: checkpoints with η_c, the slowest passes (repeats of one pass summed), total time.
    (Paths are printed after it, unwrapped, so that they stay copyable.)"""
    lines = []
    if checkpoints:
        lines.append(f"checkpoints  {len(checkpoints)} (η = "
                     + ", ".join(f"{c.learning_rate:.3g}" for c in checkpoints[:6])
                     + (", ..." if len(checkpoints) > 6 else "") + ")")
    passes: dict[str, list[TaskTiming]] = {}
    for t in tasks:
        passes.setdefault(t.task, []).append(t)
    for name, ts in sorted(passes.items(), key=lambda kv: -sum(t.seconds for t in kv[1]))[:4]:
        times = f"{len(ts)} passes, " if len(ts) > 1 else ""
        lines.append(f"pass         {name}: {times}{sum(t.total for t in ts)} in {sum(t.seconds for t in ts):.1f} s")
    lines.append(f"time         {seconds:.1f} s")
    return Panel("\n".join(lines), title=f"influence-cli {command}", title_align="left", expand=False,
                 highlight=False)


def echo_written(paths: list[Path], quiet: bool) -> None:
    if not quiet:
        console.print("wrote " + ", ".join(str(p) for p in paths), highlight=False, soft_wrap=True)
