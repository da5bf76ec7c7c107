"""``influence-cli demo``: train a digits CNN on partly flipped labels offline, then audit it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from influence_cli.cli.common import QuietOpt, console, progress_for, record_run, run_guarded
from influence_cli.cli.mislabel import suspects_table
from influence_cli.demo import DemoResult, TrainSchedule, run_demo
from influence_cli.errors import InfluenceError


def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the run: data, checkpoints, recipe.yaml, "
                                                          "and the audit reports in audit/.")] = Path("runs/demo"),
    seed: Annotated[int, typer.Option(help="Seed of the split, the label flips and the training.")] = 0,
    n_train: Annotated[int, typer.Option("--n-train", help="Training examples (≤ 1,700; the rest is the test set "
                                                           "up to 297).")] = 1500,
    epochs: Annotated[int, typer.Option(help="Training epochs (6 checkpoints are saved).")] = 30,
    quiet: QuietOpt = False,
) -> None:
    """Offline demo: digits with 10% flipped labels, a small CNN trained with SGD, then mislabel-detect and score."""

    def body() -> None:
        if not 100 <= n_train <= 1700:
            raise InfluenceError(f"--n-train: must be between 100 and 1700, got {n_train}")
        if epochs < 1:
            raise InfluenceError(f"--epochs: must be at least 1, got {epochs}")
        progress = progress_for(quiet)
        result = run_demo(out, seed=seed, n_train=n_train, schedule=TrainSchedule.for_epochs(epochs),
                          progress=progress)
        if not quiet:
            _print(result)
        session = result.influence.session
        record_run(result.audit, "demo", session.recipe, progress, checkpoints=session.checkpoints, html=True,
                   written=result.written, quiet=quiet)

    run_guarded(body)


def _print(result: DemoResult) -> None:
    flipped = set(result.flipped)
    console.print(suspects_table(result.mislabels, rows=10))
    console.print(f"Planted: {len(flipped)} of {result.n_train} training labels flipped. "
                  f"Flagged automatically: {result.flagged} ({result.flagged_flipped} of them flipped).")
    console.print("Recall of the flipped labels when inspecting the top of the ranking: " + ", ".join(
        f"{f:.0%} inspected → {r:.0%}" for f, r in result.recall.items()))
    test = result.influence.to_dict()["test"][0]
    console.print(f"Test example {test['test_index']} (label {test['label']}, predicted {test['prediction']}), "
                  f"{result.influence.method} influence:")
    for side in ("proponents", "opponents"):
        entries = ", ".join(f"#{e['train_index']} (label {e['label']}{', flipped' if e['train_index'] in flipped else ''}"
                            f", {e['score']:.3g})" for e in test[side])
        console.print(f"  top {side}: {entries}", highlight=False)
    console.print(f"Recipe to copy as a template: {result.recipe}\n"
                  f"Try: influence-cli mislabel-detect {result.recipe} --top 20", highlight=False, soft_wrap=True)
