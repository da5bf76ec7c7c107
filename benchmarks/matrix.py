"""Realistic mislabel-detection matrix: settings × noise (uniform, class pairs, clean twin) × seeds.

Settings (runs in :mod:`benchmarks.matrix_runs`): ``resnet18`` and ``mobilenet_v3`` (torchvision
``resnet18`` / ``mobilenet_v3_small``, generated 32×32 RGB imagefolder of ``--n-train`` 1,500
images, SGD + momentum + weight decay, batch 64, crop/flip augmentation, cosine annealing, a
checkpoint with scheduler state every k epochs; ResNet-18 η0 0.02 over 20 epochs, k = 4, MobileNetV3
per :data:`VISION_DEFAULTS`), ``digits-mlp`` and ``digits-cnn`` (checkpoints from epoch 1).
Design seeds (0, 1, …) choose the default; held-out seeds (100, 101, …) confirm it.

Per (setting, noise, seed) and method: recall@10% (share of the flips among the first 10% of the
ranking), AP (average precision of the flips), and the automatic cut's flagged share of N
(on clean twins: false alarms). Baselines: ``loss`` (final-checkpoint cross-entropy) and
``cleanlab`` (1 − p̂_y from 5-fold out-of-sample probabilities of the same architecture and
schedule; flags = ``find_label_issues``).

    python benchmarks/matrix.py --out benchmarks/results/matrix_design.json            # default size
    python benchmarks/matrix.py --seeds 100 --out benchmarks/results/matrix_heldout.json
    python benchmarks/matrix.py --full --out benchmarks/results/matrix_full.json       # every setting, 5/10/20%

``--check`` also runs ``influence-cli check`` on each clean twin with the README's CI rules
(:data:`CI_CHECKS`; no baseline file yet, so nothing is accepted) and prints one row per setting:

    python benchmarks/matrix.py --noise clean --check --out benchmarks/results/matrix_check_design.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from statistics import mean

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.matrix_runs import Run, VisionSchedule, digits_run, vision_run
from benchmarks.mislabel import first, ranking_metrics
from influence_cli.audits.check import check
from influence_cli.audits.mislabel import FlagRule, combine, compute_signals, cut_z
from influence_cli.methods import MislabelMethod
from influence_cli.recipe import load_recipe
from influence_cli.session import Session

DEFAULT_SETTINGS = ("resnet18", "digits-mlp", "digits-cnn")
ALL_SETTINGS = ("resnet18", "mobilenet_v3", "digits-mlp", "digits-cnn")
#: Old setting names still accepted by ``--settings``.
SETTING_ALIASES = {"mobilenet": "mobilenet_v3"}
#: The torchvision architecture of each vision setting.
VISION_ARCH = {"resnet18": "resnet18", "mobilenet_v3": "mobilenet_v3_small"}
#: Per-setting changes to :class:`VisionSchedule`'s defaults (the ResNet-18 recipe); explicit
#: ``--epochs/--every/--lr/--batch/--schedule`` override them.
VISION_DEFAULTS: dict[str, dict] = {"mobilenet_v3": {"lr": 0.05, "epochs": 30, "every": 5}}
#: The ``checks:`` section of the README's CI example ("Gate a dataset in CI").
CI_CHECKS = {"baseline": "checks-baseline.json", "max_flagged_mislabel_fraction": 0.01,
             "no_attack_target": {"test_indices": "0:50"}}


def build_run(setting: str, out: Path, noise: str, rate: float, seed: int, n_train: int,
              vision: VisionSchedule = VisionSchedule()) -> Run:
    """Write the run of ``setting`` into ``out`` (``noise="clean"``: nothing flipped)."""
    rate = 0.0 if noise == "clean" else rate
    if setting.startswith("digits-"):
        return digits_run(out, setting.split("-")[1], noise, rate, seed)
    return vision_run(out, replace(vision, arch=VISION_ARCH[setting]), noise, rate, seed, n_train)


def vision_schedule(setting: str, **overrides) -> VisionSchedule:
    """``setting``'s schedule: :class:`VisionSchedule` with :data:`VISION_DEFAULTS` and then the
    ``overrides`` that are not None (the CLI's explicit options)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return replace(VisionSchedule(**VISION_DEFAULTS.get(setting, {})), **given)


def test_accuracy(session: Session) -> float:
    """Accuracy of the last checkpoint on the recipe's test split."""
    idx = torch.arange(len(session.test))
    logits = torch.cat([session.outputs(session.test, i, checkpoint=-1) for i in idx.split(256)])
    return float((logits.argmax(1).cpu() == session.test.labels[idx].long()).double().mean())


def checkpoint_margins(session: Session) -> torch.Tensor:
    """[C, N] margins m_c(z) = f_c(x)_y − max_{k≠y} f_c(x)_k of every training example."""
    idx, labels = torch.arange(len(session.train)), session.train.labels.long()
    rows = []
    for c in range(len(session.weights)):
        logits = torch.cat([session.outputs(session.train, i, checkpoint=c) for i in idx.split(256)]).double().cpu()
        given = logits.gather(1, labels[:, None]).squeeze(1)
        rows.append(given - logits.scatter(1, labels[:, None], -float("inf")).max(1).values)
    return torch.stack(rows)


def cleanlab_baseline(run: Run, seed: int, folds: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 − p̂_y, ``find_label_issues`` mask) from ``folds``-fold out-of-sample probabilities p̂."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    probs = torch.zeros(len(run.labels), 10, dtype=torch.float64)
    fold_of = torch.randperm(len(run.labels), generator=torch.Generator().manual_seed(seed + 1000)) % folds
    for f in range(folds):
        held, fit = (fold_of == f).nonzero().flatten(), (fold_of != f).nonzero().flatten()
        probs[held] = run.fold_trainer(run.x[fit], run.labels[fit], run.x[held])
    y, p = run.labels.numpy(), probs.numpy()
    quality = torch.as_tensor(get_label_quality_scores(y, p, method="self_confidence"))
    mask = torch.zeros(len(y), dtype=torch.bool)
    mask[torch.as_tensor(find_label_issues(y, p, return_indices_ranked_by="self_confidence"), dtype=torch.long)] = True
    return 1.0 - quality, mask


def method_rows(signals: dict[MislabelMethod, torch.Tensor], flipped: torch.Tensor) -> dict[str, dict[str, float]]:
    """recall@10%, AP and the automatic cut's flagged share per method."""
    margin = -signals[MislabelMethod.AUM]
    out = {}
    for method in MislabelMethod:
        if method is not MislabelMethod.COMBINED and method not in signals:
            continue
        scores = combine(signals, method)
        n = FlagRule().count(cut_z(signals, method), margin)
        out[method.value] = {"flagged": n / len(scores), **rank_cells(scores, flipped, first(scores, n))}
    return out


def rank_cells(scores: torch.Tensor, flipped: torch.Tensor, flags: torch.Tensor) -> dict[str, float]:
    """recall@10% and AP when anything was flipped, plus the flags' precision."""
    if not flipped.any():
        return {}
    m = ranking_metrics(scores, flipped.double())
    hits = float(flipped[flags].sum())
    return {"recall@10%": m["recall@10%"], "AP": m["AUPRC"], "flag precision": hits / max(float(flags.sum()), 1.0)}


def run_one(setting: str, noise: str, rate: float, seed: int, n_train: int, with_cleanlab: bool,
            methods: set[MislabelMethod], vision: VisionSchedule = VisionSchedule(), with_check: bool = False) -> dict:
    """One run of the matrix: its test accuracy, the checkpoints' rates and every method's cells
    (``with_check``: also ``check`` with :data:`CI_CHECKS`)."""
    with tempfile.TemporaryDirectory() as tmp:
        run = build_run(setting, Path(tmp), noise, rate, seed, n_train, vision)
        if with_check:
            recipe = yaml.safe_load(run.recipe.read_text())
            run.recipe.write_text(yaml.safe_dump({**recipe, "checks": CI_CHECKS}, sort_keys=False))
        session = Session.from_recipe(load_recipe(run.recipe), need_test=True)
        signals, _, _, _ = compute_signals(session, methods | {MislabelMethod.AUM, MislabelMethod.LOSS})
        acc = test_accuracy(session)
        rates = [c.learning_rate for c in session.checkpoints]
        margins = checkpoint_margins(session)
        if with_check:
            result = check(session)
            outcomes = {o.rule: o for o in result.outcomes}
            check_row = {"passed": result.passed, "mislabel_method": result.facts.mislabels["method"],
                         "flagged_fraction": outcomes["max_flagged_mislabel_fraction"].value,
                         "targets_flagged": outcomes["no_attack_target"].value,
                         "rules": [o.to_dict() for o in result.outcomes]}
    flipped = torch.zeros(len(run.labels), dtype=torch.bool)
    flipped[run.flipped] = True
    row = {"setting": setting, "noise": noise, "rate": 0.0 if noise == "clean" else rate, "seed": seed,
           "n": len(run.labels), "test_acc": acc, "learning_rates": rates, "methods": method_rows(signals, flipped),
           "raw": {"flipped": run.flipped.tolist(), "margins": margins.tolist(),
                   **{m.value: signals[m].tolist() for m in signals}}}
    if with_check:
        row["check"] = check_row
    if with_cleanlab:
        suspicion, issues = cleanlab_baseline(run, seed)
        row["methods"]["cleanlab"] = {"flagged": float(issues.double().mean()),
                                      **rank_cells(suspicion, flipped, issues)}
    return row


def rescore(row: dict) -> dict:
    """``row`` with its methods' cells recomputed from the saved signals by the current library
    (cleanlab's cells kept, the saved ``combined`` as "combined (as run)"): a changed ``combined``
    or cut is measured without retraining."""
    raw = row["raw"]
    signals = {m: torch.tensor(raw[m.value], dtype=torch.float64) for m in MislabelMethod if m.value in raw}
    flipped = torch.zeros(row["n"], dtype=torch.bool)
    flipped[raw["flipped"]] = True
    kept = {f"{k} (as run)" if k == "combined" else k: v for k, v in row["methods"].items()
            if k in ("cleanlab", "combined")}
    return {**row, "methods": {**method_rows(signals, flipped), **kept}}


def table(rows: list[dict]) -> str:
    """One markdown line per (setting, noise, rate, method): means over seeds (min/max for recall/AP)."""
    lines = ["| setting | noise | test acc | method | recall@10% | AP | auto-cut flagged share |",
             "|---|---|---|---|---|---|---|"]
    keys = sorted({(r["setting"], r["noise"], r["rate"]) for r in rows})
    for setting, noise, rate in keys:
        group = [r for r in rows if (r["setting"], r["noise"], r["rate"]) == (setting, noise, rate)]
        label = "clean twin" if noise == "clean" else f"{noise} {rate:.0%}"
        acc = mean(r["test_acc"] for r in group)
        for name in group[0]["methods"]:
            cells = [r["methods"][name] for r in group]
            fmt = [f"{mean(c[k] for c in cells):.3f} (min {min(c[k] for c in cells):.3f})" if k in cells[0] else "–"
                   for k in ("recall@10%", "AP")]
            share = f"{mean(c['flagged'] for c in cells):.2%} (max {max(c['flagged'] for c in cells):.2%})"
            lines.append(f"| {setting} | {label} | {acc:.3f} | {name} | {' | '.join(fmt)} | {share} |")
    return "\n".join(lines)


def check_table(rows: list[dict]) -> str:
    """One markdown line per checked run: pass/fail and each rule's value."""
    lines = ["| setting | seed | N | test acc | flagged mislabel fraction (≤ 1%) | of 50 watched test predictions "
             "flagged as attack targets (0) | check |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "check" in r:
            c = r["check"]
            lines.append(f"| {r['setting']} | {r['seed']} | {r['n']} | {r['test_acc']:.3f} | {c['flagged_fraction']:.2%} "
                         f"| {c['targets_flagged']:.0f} | {'pass' if c['passed'] else 'FAIL'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS), choices=[*ALL_SETTINGS, *SETTING_ALIASES])
    parser.add_argument("--noise", nargs="+", default=["uniform", "pairs", "clean"])
    parser.add_argument("--rates", nargs="+", type=float, default=[0.1])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="design 0…; held out 100…")
    parser.add_argument("--n-train", type=int, default=1500, help="vision training images (at most 1,747)")
    for name, kind, text in (("epochs", int, "vision training epochs"), ("every", int, "vision checkpoint every k epochs"),
                             ("lr", float, "vision initial learning rate"), ("batch", int, "vision batch size")):
        per_setting = ", ".join(f"{s} {d[name]}" for s, d in VISION_DEFAULTS.items() if name in d)
        parser.add_argument(f"--{name}", type=kind, help=f"{text} (default {getattr(VisionSchedule, name)}"
                            + (f"; {per_setting}" if per_setting else "") + ")")
    parser.add_argument("--schedule", choices=["cosine", "step"],
                        help="vision schedule (default cosine; the first round: --n-train 600 --epochs 15 --every 3 --lr 0.01 "
                             "--batch 32 --schedule step)")
    parser.add_argument("--full", action="store_true", help="every setting, 5/10/20%% noise")
    parser.add_argument("--no-cleanlab", action="store_true")
    parser.add_argument("--vision-cleanlab", action="store_true", help="cleanlab on vision too (5 more trainings)")
    parser.add_argument("--skip", nargs="*", default=["ekfac", "arnoldi"], choices=[m.value for m in MislabelMethod],
                        help="signals not computed (default: the curvature methods, ekfac and arnoldi)")
    parser.add_argument("--check", action="store_true",
                        help="run `check` with the README's CI rules on every clean twin (one table row each)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--tables-from", type=Path, nargs="+",
                        help="print the table of saved rows, rescored by the current library (runs nothing)")
    args = parser.parse_args()
    if args.tables_from:
        print(table([rescore(r) for f in args.tables_from for r in json.loads(f.read_text())]))
        return
    if args.full:
        args.settings, args.rates = list(ALL_SETTINGS), [0.05, 0.1, 0.2]
    torch.set_num_threads(1)
    methods = set(MislabelMethod) - {MislabelMethod(m) for m in args.skip}
    rows: list[dict] = []
    for setting in [SETTING_ALIASES.get(s, s) for s in args.settings]:
        vision = vision_schedule(setting, epochs=args.epochs, every=args.every, lr=args.lr, batch=args.batch,
                                 schedule=args.schedule)
        for seed in args.seeds:
            for noise, rate in [(n, r) for n in args.noise for r in (args.rates if n != "clean" else [0.0])]:
                start = time.perf_counter()
                cleanlab = not args.no_cleanlab and noise != "clean" and (args.vision_cleanlab or "digits" in setting)
                rows.append(run_one(setting, noise, rate, seed, args.n_train, cleanlab, methods, vision,
                                    with_check=args.check and noise == "clean"))
                rows[-1]["seconds"] = round(time.perf_counter() - start, 1)
                if not setting.startswith("digits-"):
                    rows[-1]["schedule"] = {**asdict(vision), "arch": setting, "n_train": args.n_train}
                print(f"# {setting} {noise} {rate:.0%} seed {seed}: acc {rows[-1]['test_acc']:.3f}, "
                      f"{time.perf_counter() - start:.0f} s", flush=True)
                if args.out:
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text(json.dumps(rows))
    print(table(rows))
    if args.check:
        print(check_table(rows))


if __name__ == "__main__":
    main()
