"""``influence-cli demo``: train a digits CNN on partly flipped labels and a planted backdoor offline, then audit it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from influence_cli.cli.common import (
    QuietOpt,
    console,
    guarded,
    progress_for,
    run_summary,
)


@guarded
def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the run: data, checkpoints, recipe.yaml, "
                                                          "and the audit reports in audit/.")] = Path("runs/demo"),
    seed: Annotated[int, typer.Option(help="Seed of the split, the label flips and the training.")] = 0,
    n_train: Annotated[int, typer.Option("--n-train", help="Training examples (100–1,700; the rest is the test set "
                                                           "up to 297).")] = 1500,
    epochs: Annotated[int, typer.Option(help="Training epochs; a checkpoint every max(1, ⌊epochs/6⌋) of them "
                                             "(6 at 30).")] = 30,
    n_poison: Annotated[int | None, typer.Option("--n-poison", help="Backdoor poison: training images of digit 2 "
                                                 "stamped with a corner trigger and relabelled 7 (default: "
                                                 "40·n_train/1500; 0: no backdoor).")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Offline demo: digits with 10% flipped labels and a planted backdoor, a small CNN trained with SGD, then
    mislabel-detect, score and target-identify."""
    from influence_cli.demo import run_demo
    from influence_cli.outputs import Target, writable_folder
    from influence_cli.reports.demo import demo_summary

    writable_folder(Target("--out", out))  # before training: a file or read-only folder fails now
    progress = progress_for(quiet)
    result = run_demo(out, seed=seed, n_train=n_train, epochs=epochs, n_poison=n_poison, progress=progress)
    if not quiet:
        console.print(demo_summary(result), crop=False)  # paths are not cut at the terminal's width
        console.print(run_summary("demo", progress.timings, progress.seconds,
                                  result.influence.session.checkpoints))
