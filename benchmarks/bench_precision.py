"""Error of ``dtype: float32`` and ``dtype: bfloat16`` against ``dtype: float64`` TracIn scores.

Settings as in ``bench_vs_captum.py`` (MLP 100-256-256-10 and the Conv2d+BatchNorm CNN, all
layers, 3 checkpoints, CPU). Printed: max |Δ| / max |exact| of the score matrix and of the
self-influences, Pearson of the matrix, mean top-10 proponent overlap, and the time.
Run: ``python benchmarks/bench_precision.py [--n-train 2000 --n-test 200]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from bench_common import setup, timed, write_recipe
from bench_projection import overlap, pearson
from influence_cli import load_recipe, score


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| model | dtype | max rel diff (scores) | max rel diff (self-influence) | Pearson | top-10 overlap "
          "| wall / CPU (s) |")
    print("|---|---|---|---|---|---|---|")
    for kind in ("mlp", "cnn"):
        with tempfile.TemporaryDirectory() as tmp:
            _, ckpts, _ = setup(Path(tmp), kind, args.n_train, args.n_test)
            runs = {}
            for dtype in ("float64", "float32", "bfloat16"):
                recipe = write_recipe(Path(tmp), kind, ckpts, 0.05, name=f"{dtype}.yaml", dtype=dtype)
                r: dict[str, float] = {}
                with timed(r, "t"):
                    runs[dtype] = score(load_recipe(recipe), k=10, keep_matrix=True).passes
                exact, got = runs["float64"], runs[dtype]
                print(f"| {kind} | {dtype} | {rel(got.matrix, exact.matrix):.1e} | "
                      f"{rel(got.self_influence, exact.self_influence):.1e} | "
                      f"{pearson(got.matrix, exact.matrix):.4f} | {overlap(got.matrix, exact.matrix):.2f} | "
                      f"{r['t']:.2f} / {r['t cpu']:.2f} |")


if __name__ == "__main__":
    main()
