"""Where the time of an all-layer exact ``score`` goes: torchvision ResNet-18 on 32×32 inputs (issue 16, item 2).

Setting: ResNet-18 (10 classes, 11.2M parameters, every layer: Conv2d and Linear factorised or materialised,
BatchNorm from the hooks), random 3×32×32 images with 10 labels, N = 500 training × M = 20 test examples,
C = 2 checkpoints from 2 SGD epochs (batch 64) made with ``bench_common.train_checkpoints`` (the training
baseline of ``bench_vs_training.py``, whose per-epoch time is the denominator of the audit / training
ratio), ``batch_size: 64``, float32, CPU.

Two views of the same ``score`` (TracIn, top-10):

1. a coarse **stage timer**: the library's functions wrapped in this process only (nothing in
   ``influence_cli`` is edited), each stage's time *exclusive* of the wrapped stages it calls;
   "forward/backward" is the batched forward and backward of ``FactorizedGradients._factors`` with the
   hooks' bookkeeping, less the BatchNorm x̂ of the forward hooks; "other" is the rest of ``score``
   (Python, loops, estimator bookkeeping);
2. ``torch.profiler`` (CPU, ``record_shapes``) of a second identical ``score`` call, grouped by operator
   (self CPU time).

Run: ``python benchmarks/profile_resnet.py [--n-train 500 --n-test 20 --checkpoints 2 --batch-size 64
--threads 1 --rows 20]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

import bench_common
from bench_common import timed, train_checkpoints
from influence_cli import Session, load_recipe, score

STAGES = ("data loading", "forward/backward (+hooks)", "BatchNorm hooks (x̂, Σ e⊙x̂)",
          "conv/linear factors (unfold, transpose)", "per-example gradient formation (einsum)", "dot products",
          "squared norms (self-influence)", "estimator weighting / scaling", "top-k", "test predictions",
          "other (Python, loops)")


def build_resnet18(num_classes: int = 10) -> torch.nn.Module:
    import torchvision

    return torchvision.models.resnet18(num_classes=num_classes)


class StageTimer:
    """Exclusive wall and CPU seconds per stage of functions wrapped with :meth:`wrap`."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self._stack: list[list[float]] = []
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, name: str, stage: str) -> None:
        raw = owner.__dict__[name]
        static = isinstance(raw, staticmethod)
        fn = raw.__func__ if static else raw

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start, cpu = time.perf_counter(), time.process_time()
            self._stack.append([0.0, 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                wall, used = time.perf_counter() - start, time.process_time() - cpu
                child_wall, child_cpu = self._stack.pop()
                self.wall[stage] += wall - child_wall
                self.cpu[stage] += used - child_cpu
                if self._stack:
                    self._stack[-1][0] += wall
                    self._stack[-1][1] += used

        setattr(owner, name, staticmethod(wrapper) if static else wrapper)
        self._undo.append(lambda: setattr(owner, name, raw))

    def install(self) -> None:
        from influence_cli import engine
        from influence_cli.gradients import factorized
        from influence_cli.gradients.factorized import FactorizedGradients
        from influence_cli.gradients.factors import Factors, LayerGrads
        from influence_cli.gradients.per_example import PerExampleGradients
        from influence_cli.loading.examples import TensorExamples
        from influence_cli.topk import StreamingTopK

        for owner, name, stage in (
                (TensorExamples, "_fetch", "data loading"), (Session, "to_device", "data loading"),
                (FactorizedGradients, "_factors", "forward/backward (+hooks)"),
                (PerExampleGradients, "__call__", "forward/backward (+hooks)"),
                (factorized, "_normalized", "BatchNorm hooks (x̂, Σ e⊙x̂)"),
                (FactorizedGradients, "_norm_block", "BatchNorm hooks (x̂, Σ e⊙x̂)"),
                (FactorizedGradients, "_layer_factors", "conv/linear factors (unfold, transpose)"),
                (Factors, "materialize", "per-example gradient formation (einsum)"),
                (Factors, "dot", "dot products"), (LayerGrads, "dot", "dot products"),
                (Factors, "sq_norms", "squared norms (self-influence)"),
                (LayerGrads, "layer_sq_norms", "squared norms (self-influence)"),
                (LayerGrads, "scaled", "estimator weighting / scaling"),
                (engine, "weighted_batch", "estimator weighting / scaling"),
                (StreamingTopK, "update", "top-k"), (Session, "predict", "test predictions")):
            self.wrap(owner, name, stage)

    def uninstall(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


def write_run(folder: Path, n: int, m: int, checkpoints: int, batch_size: int) -> tuple[Path, dict[str, float]]:
    """Data, checkpoints (``bench_common.train_checkpoints``, batch 64) and the recipe; (recipe, epoch seconds)."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen)
    xt, yt = torch.randn(m, 3, 32, 32, generator=gen), torch.randint(0, 10, (m,), generator=gen)
    torch.save({"inputs": x, "labels": y}, folder / "train.pt")
    torch.save({"inputs": xt, "labels": yt}, folder / "test.pt")
    bench_common.MODELS["resnet18"] = build_resnet18  # the shared training loop, on this model
    ckpts, epoch = train_checkpoints("resnet18", x, y, folder, checkpoints=checkpoints, lr=0.01, batch_size=64)
    recipe = {"model": {"torchvision": "resnet18", "kwargs": {"num_classes": 10}},
              "checkpoints": [{"path": str(p), "learning_rate": 0.01} for p in ckpts],
              "data": {"train": {"format": "tensors", "path": "train.pt"},
                       "test": {"format": "tensors", "path": "test.pt"}},
              "batch_size": batch_size, "device": "cpu"}
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path, epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=500)
    parser.add_argument("--n-test", type=int, default=20)
    parser.add_argument("--checkpoints", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, default=20, help="operators shown from the profiler")
    parser.add_argument("--no-profiler", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    c = args.checkpoints
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); ResNet-18 32×32, all layers, exact, "
          f"N = {args.n_train}, M = {args.n_test}, C = {c}, batch {args.batch_size}\n")
    with tempfile.TemporaryDirectory() as tmp:
        recipe, epoch = write_run(Path(tmp), args.n_train, args.n_test, c, args.batch_size)
        r: dict[str, float] = {}
        with timed(r, "load"):
            session = Session.from_recipe(load_recipe(recipe), need_test=True)
        layout = session.gradients.layout if hasattr(session.gradients, "layout") else None
        timer = StageTimer()
        timer.install()
        try:
            with timed(r, "score"):
                score(session, method="tracin", k=10)
        finally:
            timer.uninstall()
        prof = None
        if not args.no_profiler:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                with timed(r, "score (profiled)"):
                    score(session, method="tracin", k=10)

    train_wall, train_cpu = epoch["epoch"] * c, epoch["epoch cpu"] * c
    if layout is not None:
        print(f"D = {sum(layout.sizes):,} parameters in {len(layout.layer_names)} layers; session load "
              f"{r['load']:.2f} s wall (not in the table)\n")
    total_wall, total_cpu = r["score"], r["score cpu"]
    timer.wall["other (Python, loops)"] = total_wall - sum(timer.wall.values())
    timer.cpu["other (Python, loops)"] = total_cpu - sum(timer.cpu.values())
    print("| stage | wall (s) | % of wall | CPU (s) | % of CPU |")
    print("|---|---|---|---|---|")
    for stage in sorted(STAGES, key=lambda s: -timer.cpu.get(s, 0.0)):
        w, u = timer.wall.get(stage, 0.0), timer.cpu.get(stage, 0.0)
        print(f"| {stage} | {w:.2f} | {100 * w / total_wall:.1f} | {u:.2f} | {100 * u / total_cpu:.1f} |")
    print(f"| **score total** | {total_wall:.2f} | 100 | {total_cpu:.2f} | 100 |")
    print(f"\nTraining: {c} SGD epochs (batch 64, train mode) on the same N: {train_wall:.2f} s wall / {train_cpu:.2f} s "
          f"CPU. Audit / {c} epochs: {total_wall / train_wall:.2f} wall / {total_cpu / train_cpu:.2f} CPU.")
    if prof is not None:
        events = prof.key_averages()
        total_self = sum(e.self_cpu_time_total for e in events)
        print(f"\ntorch.profiler (second score: {r['score (profiled)']:.2f} s wall with the profiler), by operator, "
              f"self CPU:\n")
        print("| operator | calls | self CPU (s) | % of self CPU |")
        print("|---|---|---|---|")
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.rows]:
            print(f"| {e.key} | {e.count} | {e.self_cpu_time_total / 1e6:.2f} | "
                  f"{100 * e.self_cpu_time_total / total_self:.1f} |")
        print("\nTop operators by input shape:\n")
        print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=12,
                                                                 max_name_column_width=30,
                                                                 max_shapes_column_width=70))


if __name__ == "__main__":
    main()
