"""Audit cost vs training cost: an all-layer audit over C checkpoints against C training epochs.

The audit is one ``score`` call (top-10 proponents/opponents for M = 200 test examples; the same
training pass also yields every self-influence Σ_c η_c ‖g_c(z)‖²). Training is plain SGD
(batch 64) on the same model, data and machine. Target (issue 5): audit ≤ 2 × C epochs.
Run: ``python benchmarks/bench_vs_training.py [--n-train 2000 --checkpoints 3 --threads 1]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from bench_common import setup, timed
from influence_cli import load_recipe, score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--checkpoints", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| model | N | C | training: C epochs, wall / CPU (s) | audit, wall / CPU (s) "
          "| audit / C epochs, wall / CPU |")
    print("|---|---|---|---|---|---|")
    for kind in ("mlp", "cnn"):
        with tempfile.TemporaryDirectory() as tmp:
            recipe, _, epoch = setup(Path(tmp), kind, args.n_train, args.n_test, checkpoints=args.checkpoints)
            r: dict[str, float] = {}
            with timed(r, "audit"):
                score(load_recipe(recipe), method="tracin", k=10)
            train, train_cpu = epoch["epoch"] * args.checkpoints, epoch["epoch cpu"] * args.checkpoints
            print(f"| {kind} | {args.n_train} | {args.checkpoints} | {train:.2f} / {train_cpu:.2f} | "
                  f"{r['audit']:.2f} / {r['audit cpu']:.2f} | {r['audit'] / train:.2f} / "
                  f"{r['audit cpu'] / train_cpu:.2f} |")

if __name__ == "__main__":
    main()
