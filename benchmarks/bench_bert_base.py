"""A BERT-base-sized audit (issue 16, item 4): wall time, peak RSS and the query plan of an all-layer ``score``.

The model is a ``transformers`` BertForSequenceClassification built from a config (hidden 768, 12 layers,
12 heads, intermediate 3072, vocab 30,522, 3 classes, ≈ 110M parameters; nothing downloads), saved with
``save_pretrained`` as the recipe's ``model: {transformers: model}`` folder. Checkpoint 1 is the random
initialisation, checkpoint 2 the model after one SGD step (lr 0.01) on 4 training sentences. Data: random token
ids, ``[CLS] … [SEP]``, ``seq-len`` tokens each, full attention mask, labels 0–2, written as a ``tensors`` split
whose inputs are a dict (``input_ids``, ``attention_mask``, ``token_type_ids``).

Two configurations, each a fresh subprocess (its ``ru_maxrss`` read through ``RUSAGE_CHILDREN``):

1. ``exact``: all layers, ``memory_gb`` (3 by default) bounding the query side C·M·d; the engine explains
   the M test examples in chunks (one training pass each) when C·M·d exceeds it. One example's exact gradient
   is 415 MiB per checkpoint, and the peak RSS is well above the budget (8.3 GiB at ``memory_gb: 3``, batch 2;
   12.7 GB at ``memory_gb: 4``, batch 4, M = 8): mind the machine's memory;
2. ``projected``: ``projection: {dim: 1024}`` (a CountSketch/TensorSketch of each layer's gradient).

``influence-cli plan`` runs first on each recipe (its estimates are printed beside the measurement). The
``score`` timings per pass (test gradients, training gradients) give per-example rates, from which the
full setting (N = 500, M = 100, C = 2, issue 16 item 4) is extrapolated: test side linear in M, training
side linear in N times the number of query chunks (passes) the full M needs at the same budget.

Run: ``python benchmarks/bench_bert_base.py [--n-train 8 --n-test 6 --seq-len 128 --batch-size 2
--memory-gb 3 --threads 1 --full-n 500 --full-m 100 --only exact|projected]`` (about 6 minutes on one
busy core; results: ``benchmarks/RESULTS.md``, "Issue 16 second round").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
import yaml

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
CLI = [sys.executable, "-m", "influence_cli"]


def bert_base_config(num_labels: int = 3, seq_len: int = 128):
    from transformers import BertConfig

    return BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072, max_position_embeddings=max(512, seq_len), num_labels=num_labels,
                      attn_implementation="eager")


def token_batch(n: int, seq_len: int, num_labels: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30522, (n, seq_len), generator=gen)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] … [SEP]
    inputs = {"input_ids": ids, "attention_mask": torch.ones(n, seq_len, dtype=torch.long),
              "token_type_ids": torch.zeros(n, seq_len, dtype=torch.long)}
    return {"inputs": inputs, "labels": torch.randint(0, num_labels, (n,), generator=gen)}


def write_run(folder: Path, n: int, m: int, seq_len: int, num_labels: int = 3) -> list[str]:
    """Model folder, two checkpoints and the train/test tensors in ``folder``; returns the checkpoint names."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(bert_base_config(num_labels, seq_len)).eval()
    model.save_pretrained(folder / "model")
    train, test = token_batch(n, seq_len, num_labels, 0), token_batch(m, seq_len, num_labels, 1)
    torch.save(train, folder / "train.pt")
    torch.save(test, folder / "test.pt")
    torch.save(model.state_dict(), folder / "ckpt1.pt")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    k = min(4, n)
    out = model(**{key: v[:k] for key, v in train["inputs"].items()}, labels=train["labels"][:k])
    out.loss.backward()
    opt.step()
    torch.save(model.state_dict(), folder / "ckpt2.pt")
    return ["ckpt1.pt", "ckpt2.pt"]


def write_recipe(folder: Path, name: str, ckpts: list[str], batch_size: int, **extra: object) -> Path:
    data = {"model": {"transformers": "model"},
            "checkpoints": [{"path": c, "learning_rate": 0.01} for c in ckpts],
            "data": {"train": {"format": "tensors", "path": "train.pt"},
                     "test": {"format": "tensors", "path": "test.pt"}},
            "batch_size": batch_size, "device": "cpu", **extra}
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class TaskTimer:
    """A progress sink that records each task's wall time (``test gradients``, ``train gradients``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def task(self, description: str, total: int) -> Iterator:
        start = time.perf_counter()
        yield lambda n: None
        self.seconds[description] = self.seconds.get(description, 0.0) + time.perf_counter() - start


def child(recipe: str, m: int, threads: int) -> None:
    """One ``score`` (TracIn, top-10) of the first ``m`` test examples; prints one JSON line."""
    import warnings

    from influence_cli import Session, load_recipe, score
    from influence_cli.engine import query_budget

    torch.set_num_threads(threads)
    start = time.perf_counter()
    timer = TaskTimer()
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        session = Session.from_recipe(load_recipe(recipe), need_test=True)
        res = score(session, method="tracin", test_indices=range(m), k=10, progress=timer)
    seconds = time.perf_counter() - start
    chunks = [str(w.message) for w in said if " chunks" in str(w.message)]
    budget = query_budget(session)
    print(json.dumps({"seconds": seconds, "cpu": time.process_time(), "tasks": timer.seconds,
                      "child_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "chunks": chunks, "budget_gib": None if budget is None else budget / 2**30,
                      "top": res.passes.proponents[0].tolist()}))


def run_child(recipe: Path, m: int, threads: int) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    out = subprocess.run([sys.executable, str(HERE), "--child", str(recipe), "--m", str(m), "--threads", str(threads)],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if out.returncode:
        sys.exit(f"score failed:\n{out.stderr[-3000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["wall"] = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of the children is the largest of any child so far: ours is larger than the earlier ones
    # unless it says the same, in which case the child's own figure is the one to read.
    res["peak_rss_mb"] = (after if after > before else res["child_rss_mb"] * 1024) / 1024
    return res


def run_plan(recipe: Path, threads: int) -> dict:
    start = time.perf_counter()
    out = subprocess.run([*CLI, "plan", str(recipe), "--format", "json"], capture_output=True, text=True,
                         cwd=recipe.parent, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if out.returncode:
        sys.exit(f"plan failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    plan = json.loads(out.stdout)
    plan["_seconds"] = time.perf_counter() - start
    return plan


def plan_summary(plan: dict) -> dict:
    """What ``plan`` estimated: seconds, peak memory, per-example and query-side bytes, training passes."""
    part = plan["parts"][0]
    passes = next((s["passes"] for s in part["stages"] if s["name"] == "train gradients"), None)
    return {"plan_run_s": plan["_seconds"], "seconds": plan["seconds"], "memory_gib": plan["memory_bytes"] / 2**30,
            "example_mib": part["example_bytes"] / 2**20, "query_gib": part["query_bytes"] / 2**30,
            "batch_gib": part["batch_bytes"] / 2**30, "passes": passes,
            "stages": {s["name"]: round(s["seconds"], 1) for s in part["stages"]},
            "paths": sorted({layer["path"] for layer in part["layers"]})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=8)
    parser.add_argument("--n-test", type=int, default=6)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--memory-gb", type=float, default=3.0)
    parser.add_argument("--projection-dim", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--full-n", type=int, default=500)
    parser.add_argument("--full-m", type=int, default=100)
    parser.add_argument("--only", choices=["exact", "projected"])
    parser.add_argument("--keep", type=Path, help="write the run here (kept) instead of a temporary folder")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--m", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.m, args.threads)
    torch.set_num_threads(args.threads)
    c = 2
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        ckpts = write_run(folder, args.n_train, args.n_test, args.seq_len)
        configs = {"exact": {"memory_gb": args.memory_gb},
                   "projected": {"projection": {"dim": args.projection_dim}}}
        rows = []
        for name, extra in configs.items():
            if args.only and name != args.only:
                continue
            recipe = write_recipe(folder, f"{name}.yaml", ckpts, args.batch_size, **extra)
            plan = run_plan(recipe, args.threads)
            res = run_child(recipe, args.n_test, args.threads)
            rows.append((name, plan, res))
            print(f"--- {name}\nplan: {json.dumps(plan_summary(plan))}\nscore: {json.dumps(res)}\n", flush=True)
    print(f"torch {torch.__version__}, {args.threads} thread(s); BERT-base (≈110M parameters), seq {args.seq_len}, "
          f"C = {c}, batch {args.batch_size}; measured N = {args.n_train}, M = {args.n_test}\n")
    print("| config | wall (s) | CPU (s) | peak RSS (MB) | chunks (passes) | test grads s/ex/ckpt "
          "| train s/ex/ckpt/pass | extrapolated N = {n}, M = {m} (s) |".format(n=args.full_n, m=args.full_m))
    print("|---|---|---|---|---|---|---|---|")
    plans = []
    for name, plan, res in rows:
        passes = 1
        if res["chunks"]:
            passes = int(res["chunks"][0].split(" chunks")[0].rsplit(" ", 1)[-1])
        t_test = res["tasks"].get("test gradients", 0.0) / (args.n_test * c)
        t_train = res["tasks"].get("train gradients", 0.0) / (args.n_train * c * passes)
        per_query = (res["chunks"][0].split("of at most ")[1].split(",")[0]) if res["chunks"] else str(args.n_test)
        full_passes = math.ceil(args.full_m / int(per_query)) if res["chunks"] else 1
        full = c * (args.full_m * t_test + full_passes * args.full_n * t_train)
        print(f"| {name} | {res['wall']:.0f} | {res['cpu']:.0f} | {res['peak_rss_mb']:.0f} | {passes} (≤ {per_query} "
              f"queries each) | {t_test:.2f} | {t_train:.2f} | {full:,.0f} ({full_passes} passes) |")
        p = plan_summary(plan)
        plans.append(f"| {name} | {p['seconds']:.0f} | {p['memory_gib']:.2f} | {p['example_mib']:.1f} | "
                     f"{p['query_gib']:.2f} | {p['passes']} | {p['plan_run_s']:.0f} |")
    print("\n`influence-cli plan` on the same recipes:\n")
    print("| config | estimated time (s) | estimated peak memory (GiB) | per-example gradient, C = 1 (MiB) "
          "| query side C·M·d (GiB) | training passes | plan's own run (s) |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(plans))


if __name__ == "__main__":
    main()
