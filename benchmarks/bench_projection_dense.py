"""The library's projection vs a dense Gaussian JL projection at EQUAL total projected dimension (issue 16, item 3).

Settings as in ``bench_projection.py`` (``bench_common``: MLP 100-256-256-10 on the 10-class
Gaussian mixture, and the Conv2d+BatchNorm CNN; all layers, 3 checkpoints, η = 0.05, TracIn).
For each target total T the library's per-layer ``projection: {dim: K}`` is set to the largest K
whose total Σ_l k_l (k_l = min(D_l, K): every projected layer gets exactly K numbers, a layer with
D_l ≤ K stays exact) is ≤ T; the dense baselines then get exactly that total d = Σ_l k_l:

- ``library``: ``score`` with ``projection: {dim: K, seed}`` (the shipped code, unchanged; per layer
  a TensorSketch of the factors or a CountSketch, see ``influence_cli.gradients.projection``);
- ``dense JL``: x ↦ G x / √d on the full flat per-example gradient x ∈ ℝ^D, G ~ N(0, 1)^{d×D}
  drawn in seeded row chunks (same G at every checkpoint and for both sides), never held whole;
- ``dattri``: with ``--dattri`` and dattri importable, dattri's CPU projector
  (``dattri.func.projection.BasicProjector``, Gaussian, block_size 100: a dense map regenerated in
  blocks at every call) on the same flat gradients at the same d — the speed reference of item 3
  ("≥ 10× faster than dattri's projector");
- with ``--per-layer``: ``dense per-layer`` (the same Gaussian map per layer with the library's
  k_l, which separates the sketch type from the split of d across layers) and ``CountSketch per
  layer`` (an independent ``_CountSketch`` per layer on the materialised flat gradient).

Metrics against exact TracIn (``score`` without projection): Spearman correlation of each test
example's N scores with the exact ones, and |top10 ∩ top10_exact| / 10, both averaged over the M
test examples. Time: ``library`` = CPU seconds spent inside ``ProjectedGradients.project``
(wrapped here, nothing changed; it includes forming G where the library materialises it) and the
wall seconds of the whole ``score``; dense and dattri = CPU
seconds of drawing G and the products (the flat per-example gradients they need are computed once
per checkpoint with ``torch.func`` and timed separately). A last table prints library − dense JL
(Spearman, top-10) and the CPU-time ratios dense/library and dattri/library.
Run: ``python benchmarks/bench_projection_dense.py [--seed S --kinds mlp cnn --totals 512 1536 4096
--dattri --per-layer]``.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import torch
from bench_common import MODELS, setup, timed, write_recipe
from torch import nn
from torch.func import functional_call, grad, vmap

from influence_cli import load_recipe, score
from influence_cli.gradients import projection as proj_mod


def spearman_rows(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over rows of the Spearman correlation of a[i] and b[i]."""
    ra = a.double().argsort(1).argsort(1).double()
    rb = b.double().argsort(1).argsort(1).double()
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return float(((ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1))).mean())


def overlap(a: torch.Tensor, b: torch.Tensor, k: int = 10) -> float:
    ta, tb = a.topk(k, dim=1).indices, b.topk(k, dim=1).indices
    return sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(ta, tb)) / (k * len(a))


def layer_shapes(model: nn.Module) -> list[tuple[str, int, int, int]]:
    """(kind, D_l, p, q) per layer in parameter order: Linear/Conv2d factorised (p = fan-in + 1, q = out)."""
    out = []
    for mod in model.modules():
        own = list(mod.parameters(recurse=False))
        if not own:
            continue
        d = sum(p.numel() for p in own)
        if isinstance(mod, nn.Linear):
            out.append(("factor", d, mod.in_features + (mod.bias is not None), mod.out_features))
        elif isinstance(mod, nn.Conv2d):
            fan = mod.in_channels // mod.groups * math.prod(mod.kernel_size)
            out.append(("factor", d, fan + (mod.bias is not None), mod.out_channels))
        else:
            out.append(("flat", d, 0, 0))
    return out


def library_sizes(shapes: list[tuple[str, int, int, int]], k: int) -> list[int]:
    """k_l = min(D_l, K) per layer, as ``ProjectedGradients._map`` chooses them (checked against its layout below)."""
    return [min(d, k) for _, d, _, _ in shapes]


def per_example_grads(kind: str, ckpt: Path, x: torch.Tensor, y: torch.Tensor, batch: int = 250) -> torch.Tensor:
    """[n, D] float32 per-example gradients of the cross-entropy, eval mode, parameter order."""
    model = MODELS[kind]()
    model.load_state_dict(torch.load(ckpt))
    model.eval()
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b for n, b in model.named_buffers()}

    def loss(w: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, {**w, **buffers}, (xi.unsqueeze(0),))
        return nn.functional.cross_entropy(out, yi.unsqueeze(0))

    g = vmap(grad(loss), in_dims=(None, 0, 0))
    rows = []
    for i in range(0, len(y), batch):
        gi = g(params, x[i:i + batch], y[i:i + batch])
        rows.append(torch.cat([gi[n].flatten(1) for n in params], dim=1))
    return torch.cat(rows)


def dense_project(x: torch.Tensor, d: int, seed: int, chunk_rows: int = 256) -> torch.Tensor:
    """G x / √d with G ~ N(0,1)^{d×D}, drawn in seeded chunks of rows (memory chunk_rows × D)."""
    out = x.new_empty(x.shape[0], d)
    for r, start in enumerate(range(0, d, chunk_rows)):
        rows = min(chunk_rows, d - start)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + r)
        gmat = torch.randn(rows, x.shape[1], generator=gen, dtype=x.dtype)
        out[:, start:start + rows] = x @ gmat.T
    return out / math.sqrt(d)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", default=["mlp", "cnn"])
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--totals", type=int, nargs="+", default=[512, 1536, 4096])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dattri", action="store_true", help="also time dattri's BasicProjector (if importable)")
    parser.add_argument("--per-layer", action="store_true", help="also the per-layer dense / CountSketch baselines")
    args = parser.parse_args()
    basic_projector = None
    if args.dattri:
        try:
            from dattri.func.projection import BasicProjector, ProjectionType
            basic_projector = (BasicProjector, ProjectionType)
        except ImportError:
            print("(dattri not importable: no dattri rows; dense JL is the same dense Gaussian map)")
    torch.set_num_threads(args.threads)

    # Time the library's projection without changing it: wrap ProjectedGradients.project here.
    spent = {"cpu": 0.0}
    seen: dict[str, tuple] = {}
    original = proj_mod.ProjectedGradients.project

    def timed_project(self, grads):  # type: ignore[no-untyped-def]
        t = time.process_time()
        out = original(self, grads)
        spent["cpu"] += time.process_time() - t
        seen["sizes"] = self.layout.sizes
        seen["paths"] = tuple(self.path(l) for l in range(len(self.layout.sizes)))
        return out

    proj_mod.ProjectedGradients.project = timed_project  # type: ignore[method-assign]

    print("| model | method | per-layer K | total dim d | Spearman | top-10 overlap | projection CPU s | score wall s |")
    print("|---|---|---|---|---|---|---|---|")
    summary: list[str] = []
    for kind in args.kinds:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            recipe, ckpts, _ = setup(folder, kind, args.n_train, args.n_test)
            r: dict[str, float] = {}
            with timed(r, "exact"):
                exact = score(load_recipe(recipe), k=10, keep_matrix=True).matrix
            print(f"| {kind} | exact | – | – | 1 | 1 | – | {r['exact']:.2f} |", flush=True)
            shapes = layer_shapes(MODELS[kind]())
            total_d = sum(s[1] for s in shapes)
            plans = []  # (per-layer K, sizes)
            for target in args.totals:
                best = None
                for k in range(1, target + 1):
                    sizes = library_sizes(shapes, k)
                    if sum(sizes) <= target and sum(sizes) < total_d:
                        best = (k, sizes)
                if best is not None and best not in plans:
                    plans.append(best)

            lib: dict[int, tuple[float, float, float]] = {}
            for k, sizes in plans:
                rec = write_recipe(folder, kind, ckpts, 0.05, name=f"k{k}.yaml",
                                   projection={"dim": k, "seed": args.seed})
                spent["cpu"] = 0.0
                with timed(r, "lib"):
                    got = score(load_recipe(rec), k=10, keep_matrix=True).matrix
                assert tuple(seen["sizes"]) == tuple(sizes), (seen["sizes"], sizes)
                lib[k] = (spearman_rows(got, exact), overlap(got, exact), spent["cpu"])
                print(f"| {kind} | library ({'/'.join(sorted(set(seen['paths'])))}) | {k} | {sum(sizes)} | "
                      f"{lib[k][0]:.3f} | {lib[k][1]:.2f} | {spent['cpu']:.2f} | {r['lib']:.2f} |", flush=True)

            # Dense baselines on the full flat per-example gradients.
            train, test = torch.load(folder / "train.pt"), torch.load(folder / "test.pt")
            acc = {("dense", k): torch.zeros(args.n_test, args.n_train) for k, _ in plans}
            if args.per_layer:
                acc.update({("layer", k): torch.zeros(args.n_test, args.n_train) for k, _ in plans})
                acc.update({("cs", k): torch.zeros(args.n_test, args.n_train) for k, _ in plans})
            if basic_projector is not None:
                acc.update({("dattri", k): torch.zeros(args.n_test, args.n_train) for k, _ in plans})
                projectors = {k: basic_projector[0](total_d, sum(sizes), args.seed, basic_projector[1].normal,
                                                    torch.device("cpu")) for k, sizes in plans}
            sketches = {}
            for k, sizes in plans:
                for l, s in enumerate(shapes):
                    if sizes[l] < s[1]:
                        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + 104_729 * (l + 1) + sizes[l])
                        sketches[(k, l)] = proj_mod._CountSketch(
                            torch.randint(0, sizes[l], (s[1],), generator=gen),
                            torch.randint(0, 2, (s[1],), generator=gen).float() * 2 - 1, sizes[l])
            exact_mine = torch.zeros(args.n_test, args.n_train, dtype=torch.float64)
            secs = {key: 0.0 for key in acc}
            grad_s = 0.0
            for ckpt in ckpts:
                t = time.process_time()
                gx = torch.cat([per_example_grads(kind, ckpt, test["inputs"], test["labels"]),
                                per_example_grads(kind, ckpt, train["inputs"], train["labels"])])
                grad_s += time.process_time() - t
                m = args.n_test
                exact_mine += 0.05 * (gx[:m].double() @ gx[m:].double().T)
                bounds = [0, *torch.tensor([s[1] for s in shapes]).cumsum(0).tolist()]
                for k, sizes in plans:
                    d = sum(sizes)
                    t = time.process_time()
                    y = dense_project(gx, d, args.seed)
                    acc[("dense", k)] += 0.05 * (y[:m] @ y[m:].T)
                    secs[("dense", k)] += time.process_time() - t
                    if basic_projector is not None:
                        t = time.process_time()
                        y = projectors[k].project(gx, ensemble_id=0)
                        acc[("dattri", k)] += 0.05 * (y[:m] @ y[m:].T)
                        secs[("dattri", k)] += time.process_time() - t
                    if not args.per_layer:
                        continue
                    t = time.process_time()
                    parts = []
                    for l, (a, b) in enumerate(pairwise(bounds)):
                        block = gx[:, a:b]
                        parts.append(block if sizes[l] >= b - a else dense_project(block, sizes[l], args.seed + 7919 * (l + 1)))
                    y = torch.cat(parts, dim=1)
                    acc[("layer", k)] += 0.05 * (y[:m] @ y[m:].T)
                    secs[("layer", k)] += time.process_time() - t
                    t = time.process_time()
                    y = torch.cat([gx[:, a:b] if (k, l) not in sketches else sketches[(k, l)](gx[:, a:b])
                                   for l, (a, b) in enumerate(pairwise(bounds))], dim=1)
                    acc[("cs", k)] += 0.05 * (y[:m] @ y[m:].T)
                    secs[("cs", k)] += time.process_time() - t
                del gx
            print(f"| {kind} | (check: torch.func exact vs library exact) | – | D = {total_d} | "
                  f"{spearman_rows(exact_mine, exact):.4f} | {overlap(exact_mine, exact):.2f} | "
                  f"grads {grad_s:.2f} | – |", flush=True)
            for k, sizes in plans:
                for method, label in (("dense", "dense JL (flat)"), ("dattri", "dattri BasicProjector"),
                                      ("layer", "dense JL per layer"), ("cs", "CountSketch per layer")):
                    if (method, k) not in acc:
                        continue
                    got = acc[(method, k)]
                    print(f"| {kind} | {label} | {k} | {sum(sizes)} | {spearman_rows(got, exact):.3f} | "
                          f"{overlap(got, exact):.2f} | {secs[(method, k)]:.2f} | – |", flush=True)
                dense = acc[("dense", k)]
                ds, do = spearman_rows(dense, exact), overlap(dense, exact)
                ratio = lambda key: (f"{secs[key] / max(lib[k][2], 1e-9):.0f}×"  # noqa: E731
                                     if key in secs else "–")
                summary.append(f"| {kind} | {sum(sizes)} | {lib[k][0] - ds:+.3f} | {lib[k][1] - do:+.2f} | "
                               f"{ratio(('dense', k))} | {ratio(('dattri', k))} |")
    print("\n| model | d | Spearman library − dense JL | top-10 library − dense JL | dense CPU / library | "
          "dattri CPU / library |")
    print("|---|---|---|---|---|---|")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
