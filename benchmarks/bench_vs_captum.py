"""influence-cli vs Captum 0.9 ``TracInCP(sample_wise_grads_per_batch=True)``, in one process.

Same checkpoints, data, layers and learning rates; both in float32 on the CPU. Two settings:

- ``mlp``: 100-256-256-10 MLP (94k parameters), 3 checkpoints, N = 2,000 train × M = 200 test,
  all layers (the reference setting of issue 5).
- ``cnn``: two Conv2d + BatchNorm blocks and a Linear head. Captum's hook path only knows Linear
  and Conv2d (it silently drops BatchNorm), so both sides use ``layers: [conv1, conv2, fc]``;
  influence-cli's all-layer time (BatchNorm through torch.func) is printed as well.

Timed: the full [M, N] TracIn matrix Σ_c η_c ⟨g_c(z′), g_c(z)⟩ (influence-cli also keeps the top-10
lists) and the N self-influences Σ_c η_c ‖g_c(z)‖². "max rel diff" = max |ours − captum| / max |captum|.
Run: ``python benchmarks/bench_vs_captum.py [--n-train 2000 --n-test 200 --threads 1]``. One
thread by default: on a shared machine a second intra-op thread waits on a busy core and makes
both sides' wall times erratic.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from bench_common import MODELS, setup, timed, write_recipe
from influence_cli import load_recipe
from influence_cli.engine import query_features, train_pass
from influence_cli.methods import Method
from influence_cli.session import Session

LR = 0.05


def ours(recipe: Path, m: int, results: dict[str, float], prefix: str = "ours") -> tuple[torch.Tensor, torch.Tensor]:
    """(score matrix [M, N], self-influence [N]) with the timings recorded under ``prefix``."""
    with timed(results, f"{prefix} load"):
        session = Session.from_recipe(load_recipe(recipe), need_test=True)
    idx = torch.arange(m)
    with timed(results, f"{prefix} matrix"):
        query = query_features(session, Method.TRACIN, idx, session.test.labels[idx])
        matrix = train_pass(session, Method.TRACIN, query, k=10, keep_matrix=True).matrix
    with timed(results, f"{prefix} self"):
        self_inf = train_pass(session, Method.TRACIN).self_influence
    return matrix, self_inf


def captum(kind: str, folder: Path, ckpts: list[Path], layers: list[str] | None, m: int,
           results: dict[str, float]) -> tuple[torch.Tensor, torch.Tensor]:
    from captum.influence import TracInCP

    def load(model: nn.Module, path: str) -> float:
        model.load_state_dict(torch.load(path, weights_only=True))
        model.eval()
        return LR

    train, test = torch.load(folder / "train.pt"), torch.load(folder / "test.pt")
    tracin = TracInCP(MODELS[kind]().eval(), TensorDataset(train["inputs"], train["labels"]),
                      [str(p) for p in ckpts], checkpoints_load_func=load,
                      loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=500,
                      sample_wise_grads_per_batch=True, layers=layers)
    with timed(results, "captum matrix"):
        matrix = tracin.influence((test["inputs"][:m], test["labels"][:m]))
    with timed(results, "captum self"):
        self_inf = tracin.self_influence()
    return matrix, self_inf


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def run(kind: str, n_train: int, n_test: int, layers: list[str] | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        recipe, ckpts, _ = setup(folder, kind, n_train, n_test, lr=LR, layers=layers)
        r: dict[str, float] = {}
        their_m, their_s = captum(kind, folder, ckpts, layers, n_test, r)
        our_m, our_s = ours(recipe, n_test, r)
        torchfunc = write_recipe(folder, kind, ckpts, LR, layers=layers, factorize=False, name="torchfunc.yaml")
        ours(torchfunc, n_test, r, prefix="ours (factorize: false)")
        if kind == "cnn":
            ours(write_recipe(folder, kind, ckpts, LR, name="all.yaml"), n_test, r, prefix="ours all layers")
    print(f"\n### {kind}: N={n_train} train × M={n_test} test, 3 checkpoints, layers={layers or 'all'}\n")
    print("| what | captum TracInCP wall / CPU (s) | influence-cli wall / CPU (s) | speed-up wall / CPU "
          "| max rel diff |")
    print("|---|---|---|---|---|")
    for what, diff in (("matrix", rel(our_m, their_m)), ("self", rel(our_s, their_s))):
        c, o = f"captum {what}", f"ours {what}"
        print(f"| {what} | {r[c]:.2f} / {r[c + ' cpu']:.2f} | {r[o]:.2f} / {r[o + ' cpu']:.2f} | "
              f"{r[c] / r[o]:.1f}× / {r[c + ' cpu'] / r[o + ' cpu']:.1f}× | {diff:.1e} |")
    print()
    for key, value in r.items():
        if not key.startswith("captum") and not key.endswith(" cpu"):
            print(f"- {key}: {value:.2f} s wall, {r[key + ' cpu']:.2f} s CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--only", choices=["mlp", "cnn"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both sides")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.only in (None, "mlp"):
        run("mlp", args.n_train, args.n_test, None)
    if args.only in (None, "cnn"):
        run("cnn", args.n_train, args.n_test, ["conv1", "conv2", "fc"])


if __name__ == "__main__":
    main()
