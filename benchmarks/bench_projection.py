"""Accuracy of ``projection: {dim: K}`` against exact TracIn scores, at several K.

Settings as in ``bench_vs_captum.py`` (MLP 100-256-256-10 and the Conv2d+BatchNorm CNN, all
layers, 3 checkpoints). For each K: Pearson correlation of the whole [M, N] score matrix with the
exact one, mean top-10 proponent overlap |top10(projected) ∩ top10(exact)| / 10 over the M test
examples, Pearson of the self-influences, and the time of the matrix pass.
Run: ``python benchmarks/bench_projection.py [--n-train 2000 --n-test 200 --dims 64 256 1024 4096]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from bench_common import setup, timed, write_recipe
from influence_cli import load_recipe, score


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


def overlap(a: torch.Tensor, b: torch.Tensor, k: int = 10) -> float:
    ta, tb = a.topk(k, dim=1).indices, b.topk(k, dim=1).indices
    return sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(ta, tb)) / (k * len(a))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 256, 1024, 4096])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| model | K per layer | Pearson (scores) | top-10 overlap | Pearson (self-influence) | time (s) |")
    print("|---|---|---|---|---|---|")
    for kind in ("mlp", "cnn"):
        with tempfile.TemporaryDirectory() as tmp:
            recipe, ckpts, _ = setup(Path(tmp), kind, args.n_train, args.n_test)
            r: dict[str, float] = {}
            with timed(r, "exact"):
                exact = score(load_recipe(recipe), k=10, keep_matrix=True).passes
            print(f"| {kind} | exact | 1 | 1 | 1 | {r['exact']:.2f} |")
            for dim in args.dims:
                proj_recipe = write_recipe(Path(tmp), kind, ckpts, 0.05, name=f"k{dim}.yaml",
                                           projection={"dim": dim, "seed": 0})
                with timed(r, "proj"):
                    got = score(load_recipe(proj_recipe), k=10, keep_matrix=True).passes
                print(f"| {kind} | {dim} | {pearson(got.matrix, exact.matrix):.3f} | "
                      f"{overlap(got.matrix, exact.matrix):.2f} | "
                      f"{pearson(got.self_influence, exact.self_influence):.3f} | {r['proj']:.2f} |")


if __name__ == "__main__":
    main()
