"""Scale-out: wall time of ``score`` on 1 and 2 ranks (torchrun, gloo, one thread each), CNN setting.

The CNN setting of :mod:`bench_common` (two Conv2d + BatchNorm blocks and a Linear head on
1×16×16 inputs, 3 checkpoints, all layers, TracIn, top-10). Each rank count runs as its own
``python -m torch.distributed.run --standalone --nproc_per_node=W`` job with ``OMP_NUM_THREADS=1``;
every rank loads the recipe and computes the M test gradients (replicated, not sharded), then the
sharded training pass runs and is merged on every rank. Reported per W:

- ``train pass``: the sharded pass including the merge (the part that scales), timed on rank 0
  between two barriers;
- ``score``: the whole library call (load, test gradients, pass) on rank 0;
- ``job``: the whole torchrun command as seen from outside (start-up, imports, teardown included);
- speed-up T_1 / T_W and scaling efficiency T_1 / (W · T_W) for each.

Run: ``python benchmarks/bench_distributed.py [--n-train 8000 --n-test 50 --ranks 1 2 --repeats 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench_common import setup


def worker(recipe: str) -> None:
    """One rank: time ``score``'s stages; rank 0 prints {"score", "train pass"} seconds as JSON."""
    import torch.distributed as dist

    from influence_cli import distributed, engine, load_recipe
    from influence_cli.estimators import Method
    from influence_cli.session import Session

    multi = distributed.init()
    barrier = dist.barrier if multi else (lambda: None)
    barrier()
    start = time.perf_counter()
    session = Session.from_recipe(load_recipe(recipe), need_test=True)
    test = torch.arange(len(session.test))
    query = engine.query_features(session, Method.TRACIN, test, session.test.labels)
    barrier()
    pass_start = time.perf_counter()
    engine.train_pass(session, Method.TRACIN, query, k=10)
    end = time.perf_counter()
    if distributed.is_main():
        print(json.dumps({"score": end - start, "train pass": end - pass_start}), flush=True)


def run(recipe: Path, ranks: int) -> dict[str, float]:
    """One torchrun job with ``ranks`` processes; its timings plus the job's wall time."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={ranks}", __file__, "--worker", str(recipe)],
                          env=env, capture_output=True, text=True, check=False)
    job = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "job": job}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=8000)
    parser.add_argument("--n-test", type=int, default=50)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2, help="runs per rank count; the fastest is kept")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker)
    with tempfile.TemporaryDirectory() as tmp:
        recipe, _, _ = setup(Path(tmp), "cnn", args.n_train, args.n_test)
        best: dict[int, dict[str, float]] = {}
        for _ in range(args.repeats):
            for w in args.ranks:
                timing = run(recipe, w)
                best[w] = {k: min(v, best.get(w, timing)[k]) for k, v in timing.items()}
    base = best[args.ranks[0]]
    keys = ("train pass", "score", "job")
    print(f"N = {args.n_train}, M = {args.n_test}, CNN (bench_common), 3 checkpoints, TracIn, top-10; "
          f"fastest of {args.repeats}\n")
    print("| ranks | " + " | ".join(f"{k} (s) | speed-up | efficiency" for k in keys) + " |")
    print("|---|" + "---|---|---|" * len(keys))
    for w, t in best.items():
        cells = [f"{t[k]:.1f} | {base[k] / t[k]:.2f} | {base[k] / (w / args.ranks[0] * t[k]):.0%}" for k in keys]
        print(f"| {w} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
