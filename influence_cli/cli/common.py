"""What every command shares: option types, the error boundary, the consoles and progress bars."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Callable, Iterator, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichBars, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from influence_cli.errors import InfluenceError
from influence_cli.progress import Advance, NoProgress, Progress
from influence_cli.recipe import Recipe

console = Console()
err_console = Console(stderr=True)

RecipeArg = Annotated[Path, typer.Argument(help="The recipe YAML file.", show_default=False)]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default: the recipe's `output`).",
                                             rich_help_panel="Output")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or tables.", rich_help_panel="Output")]
TestIndicesOpt = Annotated[str | None, typer.Option(
    "--test-indices", help="Test examples to explain: '0,3,7', '0:100' or a mix ('0:10,15'). Default: all.",
    rich_help_panel="Selection")]

T = TypeVar("T")


def run_guarded(fn: Callable[[], T]) -> T:
    """Run a command body; map domain errors to one stderr line and an exit code (never a traceback).

    Exit codes: 0 clean, 1 findings (checks), 2 usage or input error, 3 internal error,
    130 interrupted. ``INFLUENCE_CLI_DEBUG=1`` re-raises internal errors with their traceback.
    """
    try:
        return fn()
    except InfluenceError as exc:
        err_console.print(f"[bold red]error:[/] {exc.message}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err_console.print("interrupted; reports are written atomically, so none is half-written")
        raise typer.Exit(130) from None
    except typer.Exit:
        raise
    except Exception as exc:  # a bug: one line, unless debugging
        if os.environ.get("INFLUENCE_CLI_DEBUG"):
            raise
        err_console.print(f"[bold red]internal error:[/] {type(exc).__name__}: {exc} "
                          "(set INFLUENCE_CLI_DEBUG=1 for the traceback)", highlight=False, soft_wrap=True)
        raise typer.Exit(3) from None


def output_dir(recipe: Recipe, out: Path | None) -> Path:
    """``--out`` if given (relative to the working directory), else the recipe's ``output``
    (relative to the recipe file)."""
    return out if out is not None else recipe.resolve(recipe.output)


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
    """Progress bars on stderr with ETA when it is a terminal; one line per finished task otherwise."""

    def __init__(self) -> None:
        self.interactive = err_console.is_terminal

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        if not self.interactive:
            yield lambda n: None
            err_console.print(f"{description}: {total} done", highlight=False)
            return
        bars = RichBars(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=True)
        with bars:
            task_id = bars.add_task(description, total=total)
            yield lambda n: bars.advance(task_id, n)


def progress_for(quiet: bool) -> Progress:
    return NoProgress() if quiet else RichProgress()


def echo_written(paths: list[Path], quiet: bool) -> None:
    if not quiet:
        console.print("wrote " + ", ".join(str(p) for p in paths), highlight=False, soft_wrap=True)
