"""Memory bounded by a budget, not by M: peak RSS of an all-layer ``score`` (the MLP, 94k parameters) as the number
of test examples M grows, without a budget (the query side C × M × d held whole) and with
``memory_gb`` (the queries explained in chunks, one training pass each).

Each measurement runs in a fresh subprocess so that its peak RSS (``ru_maxrss``) is its own; every
budgeted run also checks that its top-k lists equal the unbudgeted run's. Factorisation is off
(``factorize: false``) so that each test example holds its full gradient, the case the budget is for.
Run: ``python benchmarks/bench_memory.py [--tests 100 800 --budget-gb 0.1 --n-train 1000 --kind mlp --threads 1]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from bench_common import make_data, setup


def child(recipe: str, m: int, threads: int) -> None:
    """Score the first ``m`` test examples; print seconds, peak RSS and the top-k lists as JSON."""
    import warnings

    from influence_cli import load_recipe, score

    torch.set_num_threads(threads)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        res = score(load_recipe(recipe), method="tracin", test_indices=range(m), k=10)
    chunks = [str(w.message) for w in said if "chunks" in str(w.message)]
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss_mb": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024, "top": res.passes.proponents[1].tolist(), "chunks": chunks}))


def _run(recipe: Path, m: int, threads: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(recipe), "--m", str(m), "--threads", str(threads)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, nargs="+", default=[100, 800])
    parser.add_argument("--budget-gb", type=float, default=0.1)
    parser.add_argument("--kind", choices=["mlp", "cnn"], default="mlp")
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--m", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.m, args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.kind}, N = {args.n_train}, 3 checkpoints, all layers, "
          f"factorize: false, budget {args.budget_gb} GiB\n")
    print("| M test | no budget: wall (s) | peak RSS (MB) | budget: wall (s) | peak RSS (MB) | chunks | same top-k |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        recipe, _, _ = setup(folder, args.kind, args.n_train, max(args.tests), factorize=False, batch_size=100)
        data = yaml.safe_load(recipe.read_text())
        budgeted = folder / "budget.yaml"
        budgeted.write_text(yaml.safe_dump({**data, "memory_gb": args.budget_gb}, sort_keys=False))
        x, y = make_data(args.kind, max(args.tests), seed=1)
        torch.save({"inputs": x, "labels": y}, folder / "test.pt")
        for m in args.tests:
            free, bound = _run(recipe, m, args.threads), _run(budgeted, m, args.threads)
            chunks = bound["chunks"][0].split(" chunks")[0].rsplit(" ", 1)[-1] if bound["chunks"] else "1"
            print(f"| {m} | {free['seconds']:.1f} | {free['peak_rss_mb']:.0f} | {bound['seconds']:.1f} | "
                  f"{bound['peak_rss_mb']:.0f} | {chunks} | {free['top'] == bound['top']} |")


if __name__ == "__main__":
    main()
