"""Linear datamodeling score (LDS, Park et al. 2023, TRAK) of every ``score`` method on the digits MLP or CNN.

Setting: the demo's digits split (scikit-learn's bundled 1,797 images, seed 0, 1,500 train / 297
test; ``--noise-rate`` flips labels as the demo does, default 0 = clean), the demo's MLP (``--arch mlp``,
the default) or CNN (``--arch cnn``) trained by
:func:`influence_cli.demo.training.train_model` (SGD + momentum, 30 epochs, a checkpoint with its
learning rate every 5 epochs: 6 checkpoints). Each method scores the full-data run's checkpoints
(``score(..., keep_matrix=True)``), giving τ [M, N]: τ_ij = influence of training example j on test
example i.

Ground truth: S random subsets S_1..S_S of ⌊α·N⌋ training examples (seeded), each retrained with the
same initialisation, batch-order seed and schedule; L_i(S_s) = test loss of test example i under the
model trained on S_s. The retraining, the plain methods and the baselines run through the library's
:func:`influence_cli.audits.lds.evaluate` (what ``influence-cli evaluate`` runs on a user's recipe); the
curvature seeds, the sign check and Kronfluence are this script's. Predicted effect and score:

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
with its default damping 1e-8 and with the same 0.1 × mean-eigenvalue heuristic. ``--dattri`` adds
dattri 0.3's TracIn, Arnoldi influence function and TRAK (see :func:`dattri_scores`; their scores need no
sign flip). ``--curvature-seeds``
repeats ekfac/arnoldi over ``curvature.seed`` values (ekfac's sampled labels, arnoldi's start vector)
and adds a row with τ averaged over them.

    python benchmarks/lds.py                       # MLP, S = 50, α = 0.5, M = 100: ~45 s on 1 thread
    python benchmarks/lds.py --arch cnn --noise-rate 0.1 --kronfluence --dattri --out benchmarks/results/lds_cnn_n0.1_s0.json
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

from influence_cli import Session, load_recipe
from influence_cli.audits.lds import BASELINES, evaluate, lds, method_scores
from influence_cli.demo import make_digits_run
from influence_cli.demo.models import build_model
from influence_cli.demo.training import TrainSchedule, train_model
from influence_cli.recipe import CurvatureSpec

METHODS = ("tracin", "gas", "gas-l", "ekfac", "arnoldi")
CURVED = ("ekfac", "arnoldi")


def test_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy [M] of ``model`` (eval mode) on (x, y)."""
    with torch.no_grad():
        return nn.functional.cross_entropy(model.eval()(x), y, reduction="none")


def sign_check(arch: str, tau: torch.Tensor, ckpt: Path, train_x: torch.Tensor, labels: torch.Tensor,
               test_x: torch.Tensor, test_y: torch.Tensor) -> tuple[float, float]:
    """Share of test examples whose loss falls after one SGD step (η of ``ckpt``, float64) on their
    top proponent, and rises after one on their top opponent (both should be near 1)."""
    state = torch.load(ckpt, weights_only=True)
    train_x, test_x = train_x.double(), test_x.double()
    falls = rises = 0
    for i in range(len(test_y)):
        for j, sign in ((int(tau[i].argmax()), -1), (int(tau[i].argmin()), 1)):
            model = build_model(arch).double()
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


def kronfluence_scores(arch: str, ckpt: Path, train_x: torch.Tensor, labels: torch.Tensor, test_x: torch.Tensor,
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
    model = build_model(arch)
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


def dattri_scores(arch: str, ckpts: list[Path], train_x: torch.Tensor, labels: torch.Tensor,
                  test_x: torch.Tensor, test_y: torch.Tensor) -> dict[str, tuple[torch.Tensor, float]]:
    """dattri 0.3's attributors (``--dattri``) through its documented API (``AttributionTask`` + attributor), [M, N] each:

    - TracIn (``TracInAttributor``) over the same 6 checkpoints with their learning rates as weights
      (dattri always applies its random projection, default 512 dimensions);
    - influence function with Arnoldi (``IFAttributorArnoldi``: the top 20 eigenpairs like ``arnoldi``,
      out of its default 100 iterations, no damping) at the final checkpoint, Hessian (not Gauss-Newton)
      of the mean training loss. Its default 100 eigenpairs out of 100 iterations keep negative
      eigenvalues and return NaN (dattri 0.3 shrinks ``proj_dim`` but not the kept eigenvalues);
    - TRAK (``TRAKAttributor``, 1 checkpoint = the final one, projection 512) with dattri's documented
      margin function log p − log(1 − p) as loss and target, and 1 − p as its Q weights.

    Sign: dattri returns [N_train, N_test] = g_train · T g_test for TracIn/IF (loss gradients, positive
    = proponent, like ours) and, for TRAK, gradients of the margin (positive = raises the test margin,
    i.e. lowers the test loss): no flip is needed; the returned matrices are only transposed. The
    script also prints each one's Pearson correlation with influence-cli's tracin as a sign check."""
    from dattri.algorithm.influence_function import IFAttributorArnoldi
    from dattri.algorithm.tracin import TracInAttributor
    from dattri.algorithm.trak import TRAKAttributor
    from dattri.task import AttributionTask
    from torch.utils.data import DataLoader

    model = build_model(arch).eval()

    def batched(image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (image, label) if image.dim() == 4 else (image.unsqueeze(0), label.unsqueeze(0))

    def loss_func(params: dict, data: tuple) -> torch.Tensor:
        image, label = batched(*data)
        return nn.functional.cross_entropy(torch.func.functional_call(model, params, image), label)

    def margin_func(params: dict, data: tuple) -> torch.Tensor:
        image, label = batched(*data)
        logp = -nn.functional.cross_entropy(torch.func.functional_call(model, params, image), label)
        return logp - torch.log(1 - torch.exp(logp))

    def correct_probability(params: dict, data: tuple) -> torch.Tensor:
        image, label = batched(*data)
        return torch.exp(-nn.functional.cross_entropy(torch.func.functional_call(model, params, image), label))

    states = [torch.load(c, weights_only=True) for c in ckpts]
    train = DataLoader(TensorDataset(train_x, labels), batch_size=64, shuffle=False)
    test = DataLoader(TensorDataset(test_x, test_y), batch_size=64, shuffle=False)
    full = DataLoader(TensorDataset(train_x, labels), batch_size=len(labels), shuffle=False)
    out: dict[str, tuple[torch.Tensor, float]] = {}

    def tracin() -> torch.Tensor:
        task = AttributionTask(loss_func=loss_func, model=model, checkpoints=[s["model_state_dict"] for s in states])
        attributor = TracInAttributor(task, weight_list=torch.tensor([s["learning_rate"] for s in states]),
                                      normalized_grad=False)
        return attributor.attribute(train, test)

    def arnoldi() -> torch.Tensor:
        task = AttributionTask(loss_func=loss_func, model=model, checkpoints=states[-1]["model_state_dict"])
        attributor = IFAttributorArnoldi(task, proj_dim=20, max_iter=100)
        attributor.cache(full)
        return attributor.attribute(train, test)

    def trak() -> torch.Tensor:
        task = AttributionTask(loss_func=margin_func, model=model, checkpoints=states[-1]["model_state_dict"])
        attributor = TRAKAttributor(task, correct_probability_func=correct_probability)
        attributor.cache(train)
        return attributor.attribute(test)

    for name, run in (("dattri tracin", tracin), ("dattri if-arnoldi", arnoldi), ("dattri trak (1 ckpt)", trak)):
        t = time.perf_counter()
        try:
            out[name] = (run().T.float().contiguous(), time.perf_counter() - t)
        except Exception as err:  # noqa: BLE001 (a peer that fails is reported and skipped)
            print(f"{name}: failed ({type(err).__name__}: {err})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", choices=("mlp", "cnn"), default="mlp", help="the demo's digits MLP or CNN")
    ap.add_argument("--subsets", type=int, default=50, help="S, retrained subsets")
    ap.add_argument("--fraction", type=float, default=0.5, help="α, the subsets' share of the training set")
    ap.add_argument("--test", type=int, default=100, help="M, the first M test examples")
    ap.add_argument("--seed", type=int, default=0, help="split, initialisation and batch-order seed")
    ap.add_argument("--noise-rate", type=float, default=0.0, help="share of class-pair flipped training labels")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--curvature-seeds", type=int, nargs="+", default=[0],
                    help="ekfac/arnoldi: recipe curvature.seed values (sampled labels / start vector), one row each")
    ap.add_argument("--kronfluence", action="store_true", help="also Kronfluence's EK-FAC (pip install kronfluence)")
    ap.add_argument("--dattri", action="store_true",
                    help="also dattri's TracIn, Arnoldi IF and TRAK (pip install dattri)")
    ap.add_argument("--out", type=Path, help="write the table and per-test-example LDS as JSON")
    args = ap.parse_args()
    torch.set_num_threads(1)
    schedule = TrainSchedule()
    rows: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        recipe_path, data = make_digits_run(Path(tmp), seed=args.seed, arch=args.arch, noise="pairs",
                                            noise_rate=args.noise_rate, schedule=schedule)
        full_run_s = time.perf_counter() - t0
        m = min(args.test, len(data.test_y))
        test_x, test_y = data.test_x[:m], data.test_y[:m]
        recipe = load_recipe(recipe_path)
        session = Session.from_recipe(recipe, need_test=True)

        def train(indices: torch.Tensor, seed: int) -> nn.Module:
            """The full run's training (same initialisation, batch-order seed and schedule) on a subset."""
            return train_model(args.arch, data.train_x[indices], data.labels[indices], seed=seed, schedule=schedule)

        # The library measures the plain methods and the baselines; ekfac/arnoldi with their curvature
        # seeds are scored here against the same retrained subsets.
        plain = [mt for mt in args.methods if mt not in CURVED]
        result = evaluate(session, train, methods=[*plain, *BASELINES], subsets=args.subsets, fraction=args.fraction,
                          test_indices=range(m), seed=args.seed, keep_scores=True)
        masks, losses = result.masks, result.losses
        retrain_s = full_run_s + result.retrain_seconds
        print(f"full run + {args.subsets} retrained subsets: {retrain_s:.1f} s; mean test loss over subsets "
              f"{losses.mean():.3f} (std over subsets, mean over test examples {losses.std(0).mean():.3f})")
        taus: dict[str, tuple[torch.Tensor, float]] = {}
        for method in args.methods:
            if method not in CURVED:
                row = result.methods[method]
                if row.skipped is not None:
                    rows[method] = {"error": row.skipped}
                    print(f"{method}: skipped ({row.skipped})")
                else:
                    taus[method] = (result.scores[method], row.seconds)
                continue
            for seed in args.curvature_seeds:
                name = method if len(args.curvature_seeds) == 1 else f"{method}, seed {seed}"
                t = time.perf_counter()
                try:
                    run = Session.from_recipe(recipe.model_copy(update={"curvature": CurvatureSpec(seed=seed)}),
                                              need_test=True)
                    tau = method_scores(run, method, result.test_indices, args.seed)
                except Exception as err:  # noqa: BLE001 (a method that fails is reported and skipped)
                    rows[name] = {"error": f"{type(err).__name__}: {err}"}
                    print(f"{name}: skipped ({rows[name]['error']})")
                    continue
                taus[name] = (tau, time.perf_counter() - t)
            seeded = [taus[f"{method}, seed {s}"] for s in args.curvature_seeds if f"{method}, seed {s}" in taus]
            if len(seeded) > 1:  # τ averaged over the curvature seeds (an ensemble)
                taus[f"{method}, mean τ of {len(seeded)} seeds"] = (torch.stack([t for t, _ in seeded]).mean(0),
                                                                  sum(sec for _, sec in seeded))
        for baseline in BASELINES:
            taus[f"{baseline} (baseline)"] = (result.scores[baseline], result.methods[baseline].seconds)
        ckpts = sorted((Path(tmp) / "checkpoints").glob("epoch*.pt"), key=lambda p: int(p.stem[5:]))
        if args.kronfluence:
            taus.update(kronfluence_scores(args.arch, ckpts[-1], data.train_x, data.labels, test_x, test_y, Path(tmp) / "kf"))
        if args.dattri:
            peers = dattri_scores(args.arch, ckpts, data.train_x, data.labels, test_x, test_y)
            for name, (tau, _) in peers.items():
                if "tracin" in taus:
                    r = torch.corrcoef(torch.stack([tau.flatten(), taus["tracin"][0].flatten()]))[0, 1]
                    print(f"{name}: Pearson r with influence-cli tracin's τ = {float(r):+.2f} (as returned, no flip)")
            taus.update(peers)
        if "tracin" in taus:
            falls, rises = sign_check(args.arch, taus["tracin"][0], ckpts[0], data.train_x, data.labels, test_x, test_y)
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
