"""``influence-cli score``: top proponents and opponents of test examples."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from influence_cli.cli.common import (HtmlOpt, NoCacheOpt, OutOpt, QuietOpt, RecipeArg, TestIndicesOpt,
                                      checked_output_dir, console, parse_indices, progress_for, record_run, run_guarded,
                                      without_cache)
from influence_cli.estimators import Method
from influence_cli.recipe import load_recipe
from influence_cli.reports.influence import write_influence_reports
from influence_cli.scoring import InfluenceResult, TestLabels, score


def score_command(
    recipe: RecipeArg,
    method: Annotated[Method, typer.Option(help="tracin: Σ_c η_c⟨g,g′⟩; gas: cosine per checkpoint; "
                                                "gas-l: cosine per layer, summed.", rich_help_panel="Estimator")
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
    html: HtmlOpt = False,
    quiet: QuietOpt = False,
    no_cache: NoCacheOpt = False,
) -> None:
    """Rank the training examples that pushed each test prediction up (proponents) or down (opponents)."""

    def body() -> None:
        r, progress = without_cache(load_recipe(recipe), no_cache), progress_for(quiet)
        folder = checked_output_dir(r, out)
        result = score(r, method=method, test_indices=parse_indices(test_indices), test_labels=test_labels,
                       k=top_k, keep_matrix=save_matrix, progress=progress)
        written = write_influence_reports(result, folder)
        if not quiet:
            console.print(_table(result))
        record_run(folder, "score", r, progress, checkpoints=result.session.checkpoints, html=html,
                   written=written, quiet=quiet)

    run_guarded(body)


def _table(result: InfluenceResult, rows: int = 5, per_side: int = 3) -> Table:
    data = result.to_dict()
    table = Table(title=f"Influence ({data['method']}), first {min(rows, len(data['test']))} test examples")
    for col in ("test", "label", "pred", "top proponents (index:score)", "top opponents (index:score)"):
        table.add_column(col)
    for t in data["test"][:rows]:
        fmt = lambda side: ", ".join(f"{e['train_index']}:{e['score']:.3g}" for e in t[side][:per_side])  # noqa: E731
        table.add_row(str(t["test_index"]), str(t["label"]), str(t["prediction"]), fmt("proponents"), fmt("opponents"))
    return table
