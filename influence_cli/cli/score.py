"""``influence-cli score``: top proponents and opponents of test examples."""

from __future__ import annotations

from typing import Annotated

import typer

from influence_cli.cli.common import HtmlOpt, NoCacheOpt, OutOpt, OverwriteOpt, QuietOpt, RecipeArg, TestIndicesOpt
from influence_cli.cli.common import checked_output_dir, finish, guarded, open_recipe, progress_for
from influence_cli.methods import Method, TestLabels
from influence_cli.selection import parse_indices


@guarded
def score_command(
    recipe: RecipeArg,
    method: Annotated[Method, typer.Option(help="tracin: Σ_c η_c⟨g,g′⟩; gas: cosine per checkpoint; "
                                                "gas-l: cosine per layer, summed; ekfac: g′ᵀ(G + λI)⁻¹g at the "
                                                "final checkpoint, G the EK-FAC Gauss-Newton curvature; arnoldi: "
                                                "the same over G's top eigenpairs (Arnoldi iteration).",
                                           rich_help_panel="Estimator")
                      ] = Method.TRACIN,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Proponents and opponents kept per test example.",
                                       rich_help_panel="Estimator")] = 10,
    test_indices: TestIndicesOpt = None,
    test_labels: Annotated[TestLabels, typer.Option(help="Take the test loss at the given label or at the final "
                                                         "model's prediction.", rich_help_panel="Selection")
                           ] = TestLabels.GIVEN,
    save_matrix: Annotated[bool, typer.Option(help="Also write the full test × train matrix (scores.safetensors).",
                                              rich_help_panel="Output")] = False,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    html: HtmlOpt = False,
    quiet: QuietOpt = False,
    no_cache: NoCacheOpt = False,
) -> None:
    """Rank the training examples that pushed each test prediction up (proponents) or down (opponents)."""
    r, progress = open_recipe(recipe, no_cache), progress_for(quiet)
    folder = checked_output_dir(r, out, overwrite=overwrite)
    from influence_cli.scoring import score  # the library (and torch) once the inputs are checked

    result = score(r, method=method, test_indices=parse_indices(test_indices), test_labels=test_labels, k=top_k,
                   keep_matrix=save_matrix, progress=progress)
    finish(result, folder, progress, html=html, quiet=quiet, overwrite=overwrite)
