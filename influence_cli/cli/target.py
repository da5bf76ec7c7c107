"""``influence-cli target-identify``: which test example was a training-set attack's target, and its poison."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from influence_cli.audits.target import (DEFAULT_K, DEFAULT_MIN_SHARE, DEFAULT_SHARE_THRESHOLD, DEFAULT_THRESHOLD,
                                         TargetResult, target_identify)
from influence_cli.cli.common import (HtmlOpt, NoCacheOpt, OutOpt, QuietOpt, RecipeArg, TestIndicesOpt,
                                      checked_output_dir, console, parse_indices, progress_for, record_run, run_guarded,
                                      without_cache)
from influence_cli.estimators import Method
from influence_cli.recipe import load_recipe
from influence_cli.reports.target import write_target_reports


def target_command(
    recipe: RecipeArg,
    method: Annotated[Method, typer.Option(help="gas-l: cosine per layer (default); gas: cosine per checkpoint; "
                                                "tracin: raw gradient products.", rich_help_panel="Estimator")
                      ] = Method.GAS_L,
    test_indices: TestIndicesOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Proponents kept per candidate (the upper "
                                       "tail examined; about the number of attack examples).",
                                       rich_help_panel="Estimator")] = DEFAULT_K,
    threshold: Annotated[float, typer.Option(help="Flag candidates whose anomaly score (a median/MAD z-score over "
                                                  "the candidates) exceeds this.", rich_help_panel="Flagging")
                         ] = DEFAULT_THRESHOLD,
    share_threshold: Annotated[float, typer.Option(help="... or exceeds this and more than --min-share of its "
                                                        "top-k proponents are its own.", rich_help_panel="Flagging")
                               ] = DEFAULT_SHARE_THRESHOLD,
    min_share: Annotated[float, typer.Option(help="Share of the top-k that no other candidate scores higher, for "
                                                  "--share-threshold (1: that rule off).", rich_help_panel="Flagging")
                         ] = DEFAULT_MIN_SHARE,
    misclassified_only: Annotated[bool, typer.Option(
        "--misclassified-only/--any-prediction",
        help="Only candidates predicted differently from their test label (an attack's goal) can be flagged, "
             "and they rank first; --any-prediction when the test labels are not ground truth.",
        rich_help_panel="Flagging")] = True,
    no_cache: NoCacheOpt = False,
    out: OutOpt = None,
    html: HtmlOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Rank test examples by how much they look like the target of a poisoning or backdoor attack; list the
    suspected attack examples of each flagged one (suspects.txt)."""

    def body() -> None:
        r, progress = without_cache(load_recipe(recipe), no_cache), progress_for(quiet)
        folder = checked_output_dir(r, out)
        result = target_identify(r, method=method, test_indices=parse_indices(test_indices), k=top_k,
                                 threshold=threshold, share_threshold=share_threshold, min_share=min_share,
                                 misclassified_only=misclassified_only, progress=progress)
        written = write_target_reports(result, folder)
        if not quiet:
            console.print(_table(result))
        record_run(folder, "target-identify", r, progress, checkpoints=result.session.checkpoints,
                   html=html, written=written, quiet=quiet)

    run_guarded(body)


def _table(result: TargetResult, rows: int = 5) -> Table:
    data = result.to_dict()
    n_flagged = sum(t["flagged"] for t in data["test"])
    table = Table(title=f"Attack targets ({data['method']}): {n_flagged} of {len(data['test'])} candidates flagged")
    for col in ("rank", "test index", "anomaly score", "label", "prediction", "flagged", "top suspects (index:score)"):
        table.add_column(col)
    for t in data["test"][:max(rows, n_flagged)]:
        top = ", ".join(f"{s['train_index']}:{s['score']:.3g}" for s in t["suspects"][:4])
        table.add_row(str(t["rank"]), str(t["test_index"]), f"{t['anomaly_score']:.2f}", str(t["label"]),
                      str(t["prediction"]),
                      "yes" if t["flagged"] else "", top + (" ..." if len(t["suspects"]) > 4 else ""))
    return table
