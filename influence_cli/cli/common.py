"""What every command shares: option types, the error boundary, the consoles and progress bars."""

from __future__ import annotations

import os
import re
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Sequence, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichBars, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from influence_cli import distributed
from influence_cli.errors import InfluenceError, ParameterError
from influence_cli.outputs import Target, guard_outputs
from influence_cli.progress import Advance
from influence_cli.recipe import Recipe
from influence_cli.reports.run_info import TaskTiming, write_run_info

console = Console(quiet=not distributed.is_main())  # under torchrun only rank 0 prints results; errors: all
err_console = Console(stderr=True)

RecipeArg = Annotated[Path, typer.Argument(help="The recipe YAML file.", show_default=False)]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default: the recipe's `output`).",
                                             rich_help_panel="Output")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or tables.", rich_help_panel="Output")]
TestIndicesOpt = Annotated[str | None, typer.Option(
    "--test-indices", help="Test examples to explain: '0,3,7', '0:100' or a mix ('0:10,15'). Default: all.",
    rich_help_panel="Selection")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Ignore the recipe's `cache_dir`: compute every "
                                          "training gradient, read and write no store.", rich_help_panel="Performance")]

T = TypeVar("T")


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


def run_guarded(fn: Callable[[], T]) -> T:
    """Run a command body; map domain errors to one stderr line and an exit code (never a traceback).

    Exit codes: 0 clean, 1 findings (checks), 2 usage or input error, 3 internal error,
    130 interrupted. ``INFLUENCE_CLI_DEBUG=1`` re-raises internal errors with their traceback.
    Under ``torchrun`` it first joins the process group (:func:`influence_cli.distributed.init`).
    """
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            distributed.init()
            return fn()
    except InfluenceError as exc:
        err_console.print(f"[bold red]error:[/] {escape(cli_message(exc))}", markup=True, highlight=False, soft_wrap=True)
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


def output_dir(recipe: Recipe, out: Path | None) -> Path:
    """``--out`` if given (relative to the working directory), else the recipe's ``output``
    (relative to the recipe file)."""
    return out if out is not None else recipe.resolve(recipe.output)


def checked_output_dir(recipe: Recipe, out: Path | None, *files: Target,
                       also_reads: Sequence[tuple[Path, str]] = ()) -> Path:
    """The output folder (:func:`output_dir`), once it and the other outputs ``files`` have passed
    :func:`~influence_cli.outputs.guard_outputs`: call it before computing anything."""
    folder = output_dir(recipe, out)
    guard_outputs(recipe, [Target("--out" if out is not None else "output", folder), *files], also_reads)
    return folder


def without_cache(recipe: Recipe, no_cache: bool) -> Recipe:
    """The recipe with ``cache_dir`` dropped when ``--no-cache`` is given."""
    return recipe.model_copy(update={"cache_dir": None}) if no_cache else recipe


def parse_indices(spec: str | None) -> list[int] | None:
    """``'0,3,7'``, ``'0:100'`` (end exclusive) or a mix, as a list of ints; ``None`` stays ``None``."""
    if spec is None:
        return None
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if ":" in part:
                lo, _, hi = part.partition(":")
                out.extend(range(int(lo or 0), int(hi)))
            elif part:
                out.append(int(part))
        except ValueError:
            raise InfluenceError(f"--test-indices: cannot read {part!r}; use '0,3,7' or '0:100'") from None
    return out


class RichProgress:
    """Progress bars on stderr with ETA when it is a terminal; one plain log line per finished task
    otherwise (CI); nothing with ``show=False`` (``--quiet``). Always records each task's wall time
    (``timings``) and the run's start, for run.json and the summary."""

    def __init__(self, show: bool = True) -> None:
        self.show = show
        self.interactive = err_console.is_terminal
        self.started = time.monotonic()
        self.timings: list[TaskTiming] = []

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        start = time.monotonic()
        if self.show and self.interactive:
            bars = RichBars(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=True)
            with bars:
                task_id = bars.add_task(description, total=total)
                yield lambda n: bars.advance(task_id, n)
        else:
            yield lambda n: None
        seconds = time.monotonic() - start
        self.timings.append(TaskTiming(description, total, seconds))
        if self.show and not self.interactive:
            err_console.print(f"{description}: {total} done in {seconds:.1f} s", highlight=False)


def progress_for(quiet: bool) -> RichProgress:
    return RichProgress(show=not quiet and distributed.is_main())


HtmlOpt = Annotated[bool, typer.Option("--html", help="Also render DIR/report.html (same as `influence-cli report DIR`).",
                                       rich_help_panel="Output")]


def record_run(out: Path, command: str, recipe: Recipe, progress: RichProgress, *, checkpoints: Sequence[Any] = (),
               html: bool = False, written: Sequence[Path] = (), quiet: bool = False) -> list[Path]:
    """The shared end of every command: record ``out/run.json`` (see :mod:`influence_cli.reports.run_info`),
    render ``out/report.html`` with ``--html``, and print the one-screen summary with every path written
    (``written`` plus these). Returns all paths written."""
    seconds = time.monotonic() - progress.started
    paths = [*written, write_run_info(out, command, recipe, seconds=seconds, checkpoints=checkpoints,
                                      tasks=progress.timings)]
    if html and distributed.is_main():  # the other ranks write no files (atomic_write skips them)
        from influence_cli.reports.html import write_report

        paths.append(write_report(out, recipe))  # the command's own recipe: trusted
    if not quiet:
        console.print(run_summary(command, progress.timings, seconds, checkpoints))
        console.print(f"recipe {recipe.source}", highlight=False, soft_wrap=True)
        echo_written(paths, quiet)
        if html:
            console.print(f"report {paths[-1].resolve().as_uri()}", highlight=False, soft_wrap=True)
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
        times = f"{len(ts)} × " if len(ts) > 1 else ""
        lines.append(f"pass         {name}: {times}{ts[0].total} in {sum(t.seconds for t in ts):.1f} s")
    lines.append(f"time         {seconds:.1f} s")
    return Panel("\n".join(lines), title=f"influence-cli {command}", title_align="left", expand=False,
                 highlight=False)


def echo_written(paths: list[Path], quiet: bool) -> None:
    if not quiet:
        console.print("wrote " + ", ".join(str(p) for p in paths), highlight=False, soft_wrap=True)
