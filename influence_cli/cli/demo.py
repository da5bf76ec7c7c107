"""``influence-cli demo``: train a digits CNN on partly flipped labels and a planted backdoor offline, then audit it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from influence_cli.cli.common import QuietOpt, console, progress_for, record_run, run_guarded
from influence_cli.cli.mislabel import suspects_table
from influence_cli.demo import Backdoor, DemoResult, TrainSchedule, run_demo
from influence_cli.errors import InfluenceError
from influence_cli.outputs import Target, writable_folder


def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the run: data, checkpoints, recipe.yaml, "
                                                          "and the audit reports in audit/.")] = Path("runs/demo"),
    seed: Annotated[int, typer.Option(help="Seed of the split, the label flips and the training.")] = 0,
    n_train: Annotated[int, typer.Option("--n-train", help="Training examples (≤ 1,700; the rest is the test set "
                                                           "up to 297).")] = 1500,
    epochs: Annotated[int, typer.Option(help="Training epochs (6 checkpoints are saved).")] = 30,
    n_poison: Annotated[int | None, typer.Option("--n-poison", help="Backdoor poison: training images of digit 2 "
                                                 "stamped with a corner trigger and relabelled 7 (default: "
                                                 "40·n_train/1500; 0: no backdoor).")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Offline demo: digits with 10% flipped labels and a planted backdoor, a small CNN trained with SGD, then
    mislabel-detect, score and target-identify."""

    def body() -> None:
        if not 100 <= n_train <= 1700:
            raise InfluenceError(f"--n-train: must be between 100 and 1700, got {n_train}")
        if epochs < 1:
            raise InfluenceError(f"--epochs: must be at least 1, got {epochs}")
        if n_poison is not None and n_poison < 0:
            raise InfluenceError(f"--n-poison: must be 0 or more, got {n_poison}")
        poison = round(40 * n_train / 1500) if n_poison is None else n_poison
        writable_folder(Target("--out", out))  # before training: a file or read-only folder fails now
        progress = progress_for(quiet)
        result = run_demo(out, seed=seed, n_train=n_train, schedule=TrainSchedule.for_epochs(epochs),
                          backdoor=Backdoor(n_poison=poison) if poison else None, progress=progress)
        if not quiet:
            _print(result)
        session = result.influence.session
        record_run(result.audit, "demo", session.recipe, progress, checkpoints=session.checkpoints, html=True,
                   written=result.written, quiet=quiet)

    run_guarded(body)


def _print(result: DemoResult) -> None:
    flipped = set(result.flipped)
    console.print(suspects_table(result.mislabels, rows=10))
    console.print(f"Planted: {len(flipped)} of {result.n_train} training labels flipped"
                  + (f", plus {len(result.poison)} backdoor poison (mislabelled too, not counted as flips below)"
                     if result.poison else "")
                  + f". Flagged automatically: {result.flagged} ({result.flagged_flipped} of them flipped).")
    console.print("Recall of the flipped labels when inspecting the top of the ranking: " + ", ".join(
        f"{f:.0%} inspected → {r:.0%}" for f, r in result.recall.items()))
    if result.poison:
        _print_target(result)
    test = result.influence.to_dict()["test"][0]
    console.print(f"Test example {test['test_index']} (label {test['label']}, predicted {test['prediction']}), "
                  f"{result.influence.method} influence:")
    for side in ("proponents", "opponents"):
        entries = ", ".join(f"#{e['train_index']} (label {e['label']}{', flipped' if e['train_index'] in flipped else ''}"
                            f", {e['score']:.3g})" for e in test[side])
        console.print(f"  top {side}: {entries}", highlight=False)
    console.print(f"Recipe to copy as a template: {result.recipe}\n"
                  f"Try: influence-cli mislabel-detect {result.recipe} --top 20"
                  + (f"\n     influence-cli target-identify {result.recipe}" if result.poison else ""), highlight=False, soft_wrap=True)


def _print_target(result: DemoResult) -> None:
    row = result.target_row
    assert row is not None
    found = {s["train_index"] for s in row["suspects"]} & set(result.poison)
    n_flagged = int(result.targets.flagged.sum())
    console.print(f"Backdoor poison in the top 10% of the mislabel ranking: {result.poison_in_top} of "
                  f"{len(result.poison)} (a learned trigger makes its label fit).")
    console.print(f"target-identify ({result.targets.method}): the triggered test example {result.target} ranks "
                  f"#{row['rank']} of {len(result.targets.test_indices)} candidates (anomaly "
                  f"{row['anomaly_score']:.1f}, {'flagged' if row['flagged'] else 'NOT flagged'}; "
                  f"{n_flagged} flagged in all); {len(found)} of its {len(row['suspects'])} suspects are among the "
                  f"{len(result.poison)} poison.", highlight=False)
