"""Linear datamodeling score (LDS, Park et al. 2023, TRAK) of every ``score`` method on the digits MLP.

Setting: the demo's digits split (scikit-learn's bundled 1,797 images, seed 0, 1,500 train / 297
test; ``--noise-rate`` flips labels as the demo does, default 0 = clean), the demo's MLP trained by
:func:`influence_cli.demo.training.train_model` (SGD + momentum, 30 epochs, a checkpoint with its
learning rate every 5 epochs: 6 checkpoints). Each method scores the full-data run's checkpoints
(``score(..., keep_matrix=True)``), giving τ [M, N]: τ_ij = influence of training example j on test
example i.

Ground truth: S random subsets S_1..S_S of ⌊α·N⌋ training examples (seeded), each retrained with the
same initialisation, batch-order seed and schedule; L_i(S_s) = test loss of test example i under the
model trained on S_s. Predicted effect and score:

    g_i(S) = Σ_{j∈S} τ_ij
    LDS_i  = Spearman_s( g_i(S_s), −L_i(S_s) ),     LDS = (1/M) Σ_i LDS_i

Sign convention: influence-cli's scores are positive for proponents, training examples whose
gradient step lowers the test loss (TracIn: Σ_c η_c⟨g_c(z), g_c(z′)⟩ > 0 means a step −η g(z)
decreases ℓ(z′) to first order; ekfac/arnoldi: g′ᵀG⁻¹g > 0 means up-weighting z lowers ℓ(z′)).
So a larger g_i(S) predicts a LOWER loss, and it is compared with −L; a good method has LDS > 0.
The script checks this sign directly (``sign check``): from the first checkpoint (the largest η and
losses), one SGD step of size η on the top TracIn proponent of test example i should lower ℓ_i, one
on its top opponent raise it (measured: 87–100% and 100% of test examples).

Baselines: ``loss`` τ_ij = −ℓ(z_j) at the final checkpoint (the same for every i: "subsets of easy
examples help"), ``random`` τ_ij ~ N(0, 1) (seeded; LDS ≈ 0 ± 1/√S per test example).

Peers: ``--kronfluence`` adds Kronfluence 1.0's EK-FAC at the final checkpoint (its own sampled labels)
with its default damping 1e-8 and with the same 0.1 × mean-eigenvalue heuristic. ``--curvature-seeds``
repeats ekfac/arnoldi over ``curvature.seed`` values (ekfac's sampled labels, arnoldi's start vector)
and adds a row with τ averaged over them.

    python benchmarks/lds.py                       # S = 40, α = 0.5, M = 100: ~30 s on 1 thread
    python benchmarks/lds.py --curvature-seeds 0 1 2 3 4 --kronfluence --out benchmarks/results/lds.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from influence_cli import Session, load_recipe, score
from influence_cli.demo import build_digits_mlp, make_digits_run
from influence_cli.demo.training import TrainSchedule, train_model
from influence_cli.recipe import CurvatureSpec

METHODS = ("tracin", "gas", "gas-l", "ekfac", "arnoldi")


def test_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy [M] of ``model`` (eval mode) on (x, y)."""
    with torch.no_grad():
        return nn.functional.cross_entropy(model.eval()(x), y, reduction="none")


def subset_losses(train_x: torch.Tensor, labels: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, *,
                  subsets: int, fraction: float, seed: int, schedule: TrainSchedule) -> tuple[torch.Tensor, torch.Tensor]:
    """(masks [S, N] bool, losses [S, M]): each subset retrained from the same init (``seed``)."""
    n = len(labels)
    gen = torch.Generator().manual_seed(1000 + seed)
    masks = torch.zeros(subsets, n, dtype=torch.bool)
    losses = torch.empty(subsets, len(test_y))
    for s in range(subsets):
        idx = torch.randperm(n, generator=gen)[: int(fraction * n)].sort().values
        masks[s, idx] = True
        model = train_model("mlp", train_x[idx], labels[idx], seed=seed, schedule=schedule)
        losses[s] = test_losses(model, test_x, test_y)
    return masks, losses


def ranks(v: torch.Tensor) -> torch.Tensor:
    """Ranks along the last dimension (ties broken by order; the values here are continuous)."""
    return v.argsort(dim=-1).argsort(dim=-1).to(torch.float64)


def spearman_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman correlation of each row of a [M, S] with the same row of b [M, S]."""
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(-1, keepdim=True), rb - rb.mean(-1, keepdim=True)
    return (ra * rb).sum(-1) / (ra.norm(dim=-1) * rb.norm(dim=-1)).clamp_min(1e-12)


def lds(tau: torch.Tensor, masks: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """LDS_i [M]: Spearman over subsets of g_i(S) = Σ_{j∈S} τ_ij against −L_i(S)."""
    predicted = tau.to(torch.float64) @ masks.to(torch.float64).T       # [M, S]
    return spearman_rows(predicted, -losses.T.to(torch.float64))


def sign_check(tau: torch.Tensor, ckpt: Path, train_x: torch.Tensor, labels: torch.Tensor,
               test_x: torch.Tensor, test_y: torch.Tensor) -> tuple[float, float]:
    """Share of test examples whose loss falls after one SGD step (η of ``ckpt``, float64) on their
    top proponent, and rises after one on their top opponent (both should be near 1)."""
    state = torch.load(ckpt, weights_only=True)
    train_x, test_x = train_x.double(), test_x.double()
    falls = rises = 0
    for i in range(len(test_y)):
        for j, sign in ((int(tau[i].argmax()), -1), (int(tau[i].argmin()), 1)):
            model = build_digits_mlp().double()
            model.load_state_dict(state["model_state_dict"])
            before = test_losses(model, test_x[i:i + 1], test_y[i:i + 1])
            model.zero_grad()
            nn.functional.cross_entropy(model(train_x[j:j + 1]), labels[j:j + 1]).backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= state["learning_rate"] * p.grad
            delta = float(test_losses(model, test_x[i:i + 1], test_y[i:i + 1]) - before)
            falls += sign < 0 and delta < 0
            rises += sign > 0 and delta > 0
    return falls / len(test_y), rises / len(test_y)


def kronfluence_scores(ckpt: Path, train_x: torch.Tensor, labels: torch.Tensor, test_x: torch.Tensor,
                       test_y: torch.Tensor, folder: Path) -> dict[str, tuple[torch.Tensor, float]]:
    """Kronfluence 1.0 EK-FAC pairwise scores [M, N] at ``ckpt`` (its own sampled labels), with its
    default damping (1e-8) and with the 0.1 × mean-eigenvalue heuristic that ``ekfac`` uses."""
    import torch.nn.functional as F
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import ScoreArguments
    from kronfluence.task import Task

    class Classification(Task):
        def compute_train_loss(self, batch: Any, model: nn.Module, sample: bool = False) -> torch.Tensor:
            logits = model(batch[0])
            if sample:  # labels drawn from the model's predictive distribution (true Fisher)
                with torch.no_grad():
                    y = torch.multinomial(torch.softmax(logits.detach(), -1), 1).flatten()
            else:
                y = batch[1]
            return F.cross_entropy(logits, y, reduction="sum")

        def compute_measurement(self, batch: Any, model: nn.Module) -> torch.Tensor:
            return self.compute_train_loss(batch, model)

    torch.manual_seed(0)
    model = build_digits_mlp()
    model.load_state_dict(torch.load(ckpt, weights_only=True)["model_state_dict"])
    task = Classification()
    analyzer = Analyzer("lds", prepare_model(model.eval(), task), task, cpu=True, output_dir=str(folder),
                        disable_tqdm=True)
    train, test = TensorDataset(train_x, labels), TensorDataset(test_x, test_y)
    t = time.perf_counter()
    analyzer.fit_all_factors("f", train, per_device_batch_size=256, overwrite_output_dir=True)
    fit_s, out = time.perf_counter() - t, {}
    for name, damping in (("kronfluence ekfac, damping 1e-8", 1e-8), ("kronfluence ekfac, damping heuristic", None)):
        t = time.perf_counter()
        analyzer.compute_pairwise_scores(name[-9:], "f", test, train, per_device_query_batch_size=len(test_y),
                                         per_device_train_batch_size=256, overwrite_output_dir=True,
                                         score_args=ScoreArguments(damping_factor=damping))
        out[name] = (analyzer.load_pairwise_scores(name[-9:])["all_modules"].float(), fit_s + time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--subsets", type=int, default=40, help="S, retrained subsets")
    ap.add_argument("--fraction", type=float, default=0.5, help="α, the subsets' share of the training set")
    ap.add_argument("--test", type=int, default=100, help="M, the first M test examples")
    ap.add_argument("--seed", type=int, default=0, help="split, initialisation and batch-order seed")
    ap.add_argument("--noise-rate", type=float, default=0.0, help="share of class-pair flipped training labels")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--curvature-seeds", type=int, nargs="+", default=[0],
                    help="ekfac/arnoldi: recipe curvature.seed values (sampled labels / start vector), one row each")
    ap.add_argument("--kronfluence", action="store_true", help="also Kronfluence's EK-FAC (pip install kronfluence)")
    ap.add_argument("--out", type=Path, help="write the table and per-test-example LDS as JSON")
    args = ap.parse_args()
    torch.set_num_threads(1)
    schedule = TrainSchedule()
    rows: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        recipe_path, data = make_digits_run(Path(tmp), seed=args.seed, arch="mlp", noise="pairs",
                                            noise_rate=args.noise_rate, schedule=schedule)
        m = min(args.test, len(data.test_y))
        test_x, test_y = data.test_x[:m], data.test_y[:m]
        masks, losses = subset_losses(data.train_x, data.labels, test_x, test_y, subsets=args.subsets,
                                      fraction=args.fraction, seed=args.seed, schedule=schedule)
        retrain_s = time.perf_counter() - t0
        print(f"full run + {args.subsets} retrained subsets: {retrain_s:.1f} s; mean test loss over subsets "
              f"{losses.mean():.3f} (std over subsets, mean over test examples {losses.std(0).mean():.3f})")
        recipe = load_recipe(recipe_path)
        session = Session.from_recipe(recipe, need_test=True)
        ckpts = sorted((Path(tmp) / "checkpoints").glob("epoch*.pt"), key=lambda p: int(p.stem[5:]))
        last_ckpt = ckpts[-1]
        taus: dict[str, tuple[torch.Tensor, float]] = {}
        for method in args.methods:
            curved = method in ("ekfac", "arnoldi")
            for seed in args.curvature_seeds if curved else [None]:
                name = method if seed is None or len(args.curvature_seeds) == 1 else f"{method}, seed {seed}"
                t = time.perf_counter()
                try:
                    run = session if seed is None else Session.from_recipe(recipe.model_copy(
                        update={"curvature": CurvatureSpec(seed=seed)}), need_test=True)
                    result = score(run, method=method, test_indices=range(m), k=1, keep_matrix=True)
                except Exception as err:  # noqa: BLE001 (a method that fails is reported and skipped)
                    rows[name] = {"error": f"{type(err).__name__}: {err}"}
                    print(f"{name}: skipped ({rows[name]['error']})")
                    continue
                taus[name] = (result.matrix.detach().cpu(), time.perf_counter() - t)
            seeded = [taus[f"{method}, seed {s}"] for s in args.curvature_seeds if f"{method}, seed {s}" in taus]
            if curved and len(seeded) > 1:  # τ averaged over the curvature seeds (an ensemble)
                taus[f"{method}, mean τ of {len(seeded)} seeds"] = (torch.stack([t for t, _ in seeded]).mean(0),
                                                                  sum(sec for _, sec in seeded))
        t = time.perf_counter()
        final = build_digits_mlp()
        final.load_state_dict(torch.load(last_ckpt, weights_only=True)["model_state_dict"])
        train_loss = test_losses(final, data.train_x, data.labels)
        taus["loss (baseline)"] = (-train_loss.expand(m, -1), time.perf_counter() - t)
        gen = torch.Generator().manual_seed(args.seed)
        taus["random (baseline)"] = (torch.randn(m, len(data.labels), generator=gen), 0.0)
        if args.kronfluence:
            taus.update(kronfluence_scores(last_ckpt, data.train_x, data.labels, test_x, test_y, Path(tmp) / "kf"))
        if "tracin" in taus:
            falls, rises = sign_check(taus["tracin"][0], ckpts[0], data.train_x, data.labels, test_x, test_y)
            print(f"sign check (TracIn, one SGD step at the first checkpoint): loss falls after the top "
                  f"proponent for {falls:.0%} of test examples, rises after the top opponent for {rises:.0%}")
    print("\n| method | mean LDS | std over test examples | seconds |\n|---|---|---|---|")
    for name, (tau, seconds) in taus.items():
        per_test = lds(tau, masks, losses)
        rows[name] = {"mean": float(per_test.mean()), "std": float(per_test.std()), "seconds": seconds,
                      "per_test": per_test.tolist()}
        print(f"| {name} | {per_test.mean():.3f} | {per_test.std():.3f} | {seconds:.1f} |")
    print(f"\n(retraining {retrain_s:.0f} s; S = {args.subsets}, α = {args.fraction}, M = {m}, N = {len(data.labels)}, "
          f"noise {args.noise_rate:.0%}; std error of a mean LDS ≈ std/√M)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                        "retrain_seconds": retrain_s, "methods": rows}, indent=1))


if __name__ == "__main__":
    main()
