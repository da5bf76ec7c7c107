"""``influence-cli target-identify``: which test example was a training-set attack's target, and its poison."""

from __future__ import annotations

from typing import Annotated

import typer

from influence_cli.cli.common import HtmlOpt, NoCacheOpt, OutOpt, OverwriteOpt, QuietOpt, RecipeArg, TestIndicesOpt
from influence_cli.cli.common import checked_output_dir, finish, guarded, open_recipe, progress_for
from influence_cli.methods import (DEFAULT_TARGET_K, DEFAULT_TARGET_MIN_SHARE, DEFAULT_TARGET_SHARE_THRESHOLD,
                                   DEFAULT_TARGET_THRESHOLD, Method)
from influence_cli.selection import parse_indices


@guarded
def target_command(
    recipe: RecipeArg,
    method: Annotated[Method, typer.Option(help="gas-l: cosine per layer (default); gas: cosine per checkpoint; "
                                                "tracin: raw gradient products; ekfac, arnoldi: "
                                                "influence functions at the final checkpoint (see score).",
                                           rich_help_panel="Estimator")
                      ] = Method.GAS_L,
    test_indices: TestIndicesOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Proponents kept per candidate (the upper "
                                       "tail examined; about the number of attack examples).",
                                       rich_help_panel="Estimator")] = DEFAULT_TARGET_K,
    threshold: Annotated[float, typer.Option(help="Flag candidates whose anomaly score (a median/MAD z-score over "
                                                  "the candidates) exceeds this.", rich_help_panel="Flagging")
                         ] = DEFAULT_TARGET_THRESHOLD,
    share_threshold: Annotated[float, typer.Option(help="... or exceeds this and more than --min-share of its "
                                                        "top-k proponents are its own.", rich_help_panel="Flagging")
                               ] = DEFAULT_TARGET_SHARE_THRESHOLD,
    min_share: Annotated[float, typer.Option(help="Share of the top-k that no other candidate scores higher, for "
                                                  "--share-threshold (1: that rule off).", rich_help_panel="Flagging")
                         ] = DEFAULT_TARGET_MIN_SHARE,
    misclassified_only: Annotated[bool, typer.Option(
        "--misclassified-only/--any-prediction",
        help="Only candidates predicted differently from their test label (an attack's goal) can be flagged, "
             "and they rank first; --any-prediction when the test labels are not ground truth.",
        rich_help_panel="Flagging")] = True,
    no_cache: NoCacheOpt = False,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    html: HtmlOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Rank test examples by how much they look like the target of a poisoning or backdoor attack; list the
    suspected attack examples of each flagged one (suspects.txt)."""
    r, progress = open_recipe(recipe, no_cache), progress_for(quiet)
    folder = checked_output_dir(r, out, overwrite=overwrite)
    from influence_cli.audits.target import target_identify  # the library (and torch) once the inputs are checked

    result = target_identify(r, method=method, test_indices=parse_indices(test_indices), k=top_k, threshold=threshold,
                             share_threshold=share_threshold, min_share=min_share,
                             misclassified_only=misclassified_only, progress=progress)
    finish(result, folder, progress, html=html, quiet=quiet, overwrite=overwrite)
