"""Scaling in N: time and peak RSS of an all-layer ``score`` on the CNN at N = 2k, 8k, 32k.

Checkpoints come from one short training run (3 epochs on 2,000 examples); each N gets its own
synthetic training file, and each measurement runs in a fresh subprocess so that its peak RSS
(``ru_maxrss``) is its own. M = 200 test examples, top-10, 3 checkpoints. Targets (issue 5):
time linear in N, peak RSS growth < 10% from 8k to 32k (the training inputs themselves,
N × 256 floats, are held in memory and count towards RSS).
Run: ``python benchmarks/bench_scaling.py [--sizes 2000 8000 32000 --threads 1]``.
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

from bench_common import make_data, setup


def child(recipe: str, threads: int) -> None:
    """Score once and print {"seconds", "cpu_seconds", "peak_rss_mb"} as JSON."""
    from influence_cli import load_recipe, score

    torch.set_num_threads(threads)
    start, cpu = time.perf_counter(), time.process_time()
    score(load_recipe(recipe), method="tracin", k=10)
    print(json.dumps({"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 32000])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads\n")
    print("| N train | wall (s) | CPU (s) | CPU / N (ms) | peak RSS (MB) |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        setup(folder, "cnn", 2000, 200)
        for n in args.sizes:
            x, y = make_data("cnn", n, seed=2)
            torch.save({"inputs": x, "labels": y}, folder / "train.pt")
            out = subprocess.run([sys.executable, __file__, "--child", str(folder / "recipe.yaml"),
                                  "--threads", str(args.threads)], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {n} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {1000 * r['cpu_seconds'] / n:.3f} | "
                  f"{r['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
