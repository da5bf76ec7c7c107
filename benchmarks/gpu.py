"""GPU throughput of an all-layer audit: ResNet-18 on 32×32 images, extrapolated to CIFAR-10.

For each precision (fp32, TF32, bf16) and mode (exact, projected to K dimensions) one ``score``
call with a single checkpoint measures the rates of its two passes: r_test (test examples per
second: their gradients) and r_train (training examples per second per checkpoint: gradients
and products with the M_b test examples). The CIFAR-10 setting (N = 50,000, M = 2,000, C = 5) is
extrapolated from them and from the engine's query plan (P training passes when the test side
C·M·d does not fit the memory budget, :func:`influence_cli.engine.query_budget`):

    T ≈ C · (M / r_test + P · N / r_train)

The products grow with M, so for M > M_b this is a lower bound. Then the tests marked ``gpu``
run (``pytest -m gpu``). Synthetic images and an untrained ResNet-18; nothing downloads.

Run: ``python benchmarks/gpu.py`` (CUDA, under 5 minutes; ``--json FILE`` keeps the figures);
``python benchmarks/gpu.py --device cpu --small --no-tests`` checks that it runs (tiny sizes).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch
import yaml

from influence_cli import Session, load_recipe, score
from influence_cli.engine import query_budget, query_example_bytes
from influence_cli.methods import Method

ROOT = Path(__file__).resolve().parents[1]
CIFAR = {"n": 50_000, "m": 2_000, "c": 5}
#: name → (recipe dtype, TF32); TF32 only changes CUDA matrix products
PRECISIONS = {"fp32": ("float32", False), "tf32": ("float32", True), "bf16": ("bfloat16", False)}


@dataclass
class Sizes:
    n: int
    m: int
    batch_size: int
    projection_dim: int


FULL, SMALL = Sizes(n=5_000, m=200, batch_size=256, projection_dim=1024), Sizes(n=16, m=4, batch_size=8,
                                                                                    projection_dim=64)


@dataclass
class Row:
    precision: str
    mode: str
    r_test: float   # test examples / s
    r_train: float  # training examples / s per checkpoint
    passes: int     # training passes the CIFAR-10 setting needs (query chunks)
    cifar_seconds: float


class TaskTimer:
    """A :class:`~influence_cli.progress.Progress` that records each task's wall time (CUDA synchronised)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.seconds = device, {}

    @contextmanager
    def task(self, description: str, total: int) -> Iterator:
        start = time.perf_counter()
        yield lambda n: None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[description] = self.seconds.get(description, 0.0) + time.perf_counter() - start


def write_run(folder: Path, sizes: Sizes, device: str) -> dict:
    """Random 3×32×32 images with 10 labels, one ResNet-18 checkpoint; returns the base recipe."""
    import torchvision

    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", sizes.n), ("test", sizes.m)):
        torch.save({"inputs": torch.randn(n, 3, 32, 32, generator=gen),
                    "labels": torch.randint(0, 10, (n,), generator=gen)}, folder / f"{split}.pt")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), folder / "ckpt.pt")
    return {"model": {"torchvision": "resnet18", "kwargs": {"num_classes": 10}},
            "checkpoints": [{"path": "ckpt.pt", "learning_rate": 0.1}],
            "data": {"train": {"format": "tensors", "path": "train.pt"},
                     "test": {"format": "tensors", "path": "test.pt"}},
            "batch_size": sizes.batch_size, "device": device}


def query_passes(session: Session) -> int:
    """P = ⌈C·M·b / budget⌉ for the CIFAR-10 setting, b one test example's bytes at one checkpoint."""
    idx = torch.arange(len(session.test))  # type: ignore[arg-type]
    per_example = query_example_bytes(session, Method.TRACIN, idx, session.test.labels)  # type: ignore[union-attr]
    budget = query_budget(session)
    return 1 if budget is None else max(1, math.ceil(CIFAR["c"] * CIFAR["m"] * per_example / budget))


def measure(folder: Path, base: dict, precision: str, mode: str, sizes: Sizes) -> Row:
    """One ``score`` call (top-10, TracIn) in this precision and mode; its pass rates and the extrapolation."""
    dtype, tf32 = PRECISIONS[precision]
    projection = {"dim": sizes.projection_dim} if mode == "projected" else None
    recipe = {**base, "dtype": dtype, "tf32": tf32, "projection": projection}
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in recipe.items() if v is not None}, sort_keys=False))
    session = Session.from_recipe(load_recipe(path), need_test=True)
    timer = TaskTimer(session.device)
    score(session, k=10, progress=timer)
    r_test = sizes.m / timer.seconds["test gradients"]
    r_train = sizes.n / timer.seconds["train gradients"]
    passes = query_passes(session)
    seconds = CIFAR["c"] * (CIFAR["m"] / r_test + passes * CIFAR["n"] / r_train)
    return Row(precision, mode, r_test, r_train, passes, seconds)


def run_gpu_tests() -> int:
    """``pytest -m gpu`` in the repository (its exit status; 5 = none collected)."""
    return subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"],
                          cwd=ROOT, check=False).returncode


def table(rows: list[Row], device: str, sizes: Sizes) -> str:
    """The figures as a Markdown table under a line that says what was measured."""
    setting = (f"ResNet-18, 32×32, {device}, N_b = {sizes.n}, M_b = {sizes.m}, batch {sizes.batch_size}, "
               f"projection K = {sizes.projection_dim}; CIFAR-10 setting N = {CIFAR['n']:,}, M = {CIFAR['m']:,}, "
               f"C = {CIFAR['c']}")
    lines = [setting, "", "| precision | mode | test ex/s | train ex/s per checkpoint | passes | CIFAR-10 estimate (s) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r.precision} | {r.mode} | {r.r_test:,.0f} | {r.r_train:,.0f} | {r.passes} | "
              f"{r.cifar_seconds:,.0f} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--small", action="store_true", help="tiny sizes (a check that it runs, not a measurement)")
    parser.add_argument("--no-tests", action="store_true", help="skip `pytest -m gpu`")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("CUDA is not available here; use --device cpu --small to check that the benchmark runs")
    sizes = SMALL if args.small else FULL
    precisions = list(PRECISIONS) if args.device.startswith("cuda") else ["fp32", "bf16"]  # no TF32 on the CPU
    with tempfile.TemporaryDirectory() as tmp:
        warm, folder = Path(tmp) / "warm-up", Path(tmp) / "run"
        warm.mkdir(), folder.mkdir()
        measure(warm, write_run(warm, SMALL, args.device), "fp32", "exact", SMALL)  # CUDA context, cuDNN, imports
        base = write_run(folder, sizes, args.device)
        rows = [measure(folder, base, p, mode, sizes) for p in precisions for mode in ("exact", "projected")]
    print(table(rows, torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu", sizes))
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "sizes": asdict(sizes), "cifar10": CIFAR,
                                         "rows": [asdict(r) for r in rows]}, indent=1))
    return 0 if args.no_tests else run_gpu_tests()


if __name__ == "__main__":
    raise SystemExit(main())
