"""Mislabel-detection benchmark: the demo setting over seeds × noise kinds × architectures.

For each (architecture, noise, seed): build the digits run of :mod:`influence_cli.demo` (10% of
the 1,500 training labels flipped: ``uniform`` to a random other class, or ``pairs`` 1↔7, 3↔8,
4↔9, 2↔5, 0↔6), compute every :class:`~influence_cli.audits.mislabel.MislabelMethod` through the
library, and compare with cleanlab: self-confidence p̂_y from 5-fold out-of-sample probabilities
of the same architecture and training schedule (``cleanlab.rank.get_label_quality_scores``
ranks all N; ``cleanlab.filter.find_label_issues`` gives its flagged set).

Prints per method the mean ± std over seeds of recall@10%, recall@20% (share of the flipped
labels among the first 10% / 20% of the ranking), AUPRC and AUROC, and for each flag rule
(our automatic cut, the previous cut ẑ > 3.5 alone, cleanlab's ``find_label_issues``) how many
were flagged, precision, recall. ``--noise clean`` trains on the true labels (0% flipped) and
reports how many examples each rule flags there (false alarms). ``--blobs`` instead runs the
check tests' setting (tiny MLP on 3 Gaussian blobs, a grid of separations, sizes, epochs and
seeds, 0% and 15% flipped) and reports the automatic cut's flags.

    python benchmarks/mislabel.py --seeds 5 --noise uniform pairs clean --out benchmarks/results/mislabel.json
    python benchmarks/mislabel.py --blobs

cleanlab is a benchmark-only dependency: ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path
from statistics import mean, pstdev

import torch
import yaml
from sklearn.metrics import average_precision_score, roc_auc_score

from influence_cli.audits.mislabel import FlagRule, combine, compute_signals, cut_z, signal_z
from influence_cli.demo import TrainSchedule, make_digits_run, train_model
from influence_cli.loading.imports import import_callable
from influence_cli.methods import MislabelMethod
from influence_cli.recipe import load_recipe
from influence_cli.session import Session

#: The previous automatic cut (robust z-score alone), kept as an ablation.
Z_ONLY = 3.5
TINY_MLP = f"{Path(__file__).resolve().parents[1] / 'tests' / 'fixtures' / 'tiny_models.py'}:build_mlp"


def ranking_metrics(scores: torch.Tensor, flipped: torch.Tensor) -> dict[str, float]:
    """recall@10%, recall@20%, AUPRC, AUROC of ``flipped`` (0/1) under ``scores`` (high = suspect)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    n, pos = len(scores), float(flipped.sum())
    out = {f"recall@{int(f * 100)}%": float(flipped[order[: round(f * n)]].sum()) / pos for f in (0.1, 0.2)}
    out["AUPRC"] = float(average_precision_score(flipped.numpy(), scores.numpy()))
    out["AUROC"] = float(roc_auc_score(flipped.numpy(), scores.numpy()))
    return out


def flag_metrics(flagged: torch.Tensor, flipped: torch.Tensor) -> dict[str, float]:
    """Count, precision and recall of a boolean ``flagged`` mask (count and share of N when
    nothing was flipped)."""
    if not flipped.any():
        return {"flagged": float(flagged.sum()), "share": float(flagged.sum()) / len(flagged)}
    hits = float(flipped[flagged].sum())
    return {"flagged": float(flagged.sum()), "precision": hits / max(float(flagged.sum()), 1.0),
            "recall": hits / float(flipped.sum())}


def first(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Mask of the n highest ``scores`` (ties by index), as mislabel-detect flags them."""
    mask = torch.zeros(len(scores), dtype=torch.bool)
    mask[torch.sort(scores, descending=True, stable=True).indices[:n]] = True
    return mask


def auto_flags(signals: dict[MislabelMethod, torch.Tensor], flipped: torch.Tensor,
               methods: tuple[MislabelMethod, ...] = tuple(MislabelMethod)) -> dict[str, dict[str, float]]:
    """Flag metrics of mislabel-detect's automatic cut per method, plus ẑ > 3.5 alone on ``combined``."""
    out = {}
    for method in methods:
        scores = combine(signals, method)
        z = cut_z(signals, method)
        out[f"{method.value} auto"] = flag_metrics(first(scores, FlagRule().count(z, -signals[MislabelMethod.AUM])),
                                                   flipped)
        if method is MislabelMethod.COMBINED:
            out[f"combined ẑ > {Z_ONLY} alone"] = flag_metrics(signal_z(scores, False) > Z_ONLY, flipped)
    return out


def cleanlab_scores(arch: str, x: torch.Tensor, labels: torch.Tensor, *, seed: int, schedule: TrainSchedule,
                    folds: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(self-confidence suspicion 1 − p̂_y, find_label_issues mask) from out-of-sample probabilities."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    probs = torch.zeros(len(labels), 10, dtype=torch.float64)
    fold_of = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed + 1000)) % folds
    for f in range(folds):
        held, fit = (fold_of == f).nonzero().flatten(), (fold_of != f).nonzero().flatten()
        model = train_model(arch, x[fit], labels[fit], seed=seed + f, schedule=schedule)
        with torch.no_grad():
            probs[held] = model(x[held]).double().softmax(1)
    y, p = labels.numpy(), probs.numpy()
    quality = get_label_quality_scores(y, p, method="self_confidence")
    issues = find_label_issues(y, p, return_indices_ranked_by="self_confidence")
    mask = torch.zeros(len(labels), dtype=torch.bool)
    mask[torch.as_tensor(issues, dtype=torch.long)] = True
    return 1.0 - torch.as_tensor(quality), mask


def run_one(arch: str, noise: str, seed: int, schedule: TrainSchedule, with_cleanlab: bool) -> dict:
    """One digits run; ``noise="clean"`` flips nothing (then only flag counts are recorded)."""
    kind = {"noise": "pairs", "noise_rate": 0.0} if noise == "clean" else {"noise": noise}
    with tempfile.TemporaryDirectory() as tmp:
        path, data = make_digits_run(Path(tmp), seed=seed, arch=arch, schedule=schedule, **kind)
        session = Session.from_recipe(load_recipe(path))
        signals, _, _, _ = compute_signals(session, set(MislabelMethod))
    flipped = torch.zeros(len(data.labels))
    flipped[data.flipped] = 1
    row: dict = {"arch": arch, "noise": noise, "seed": seed, "ranking": {},
                 "flags": auto_flags(signals, flipped.bool())}
    if noise != "clean":
        row["ranking"] = {m.value: ranking_metrics(combine(signals, m), flipped) for m in MislabelMethod}
    if with_cleanlab:
        suspicion, issues = cleanlab_scores(arch, data.train_x, data.labels, seed=seed, schedule=schedule)
        if noise != "clean":
            row["ranking"]["cleanlab"] = ranking_metrics(suspicion, flipped)
        row["flags"]["cleanlab find_label_issues"] = flag_metrics(issues, flipped.bool())
    return row


def blob_run(sep: float, n: int, epochs: int, seed: int, rate: float) -> dict:
    """The check tests' setting: 3 Gaussian blobs in 6-D (centres ``sep``·e_y, unit noise), the
    tiny 6-8-8-3 tanh MLP, plain SGD (η = 0.1, batch 20), a checkpoint every epochs/3 epochs;
    ``rate``·n labels shifted to the next class."""
    gen = torch.Generator().manual_seed(seed)
    clean = torch.arange(n) % 3
    x = sep * torch.eye(3, 6)[clean] + torch.randn(n, 6, generator=gen)
    flips = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))[: round(rate * n)]
    y = clean.clone()
    y[flips] = (y[flips] + 1) % 3
    torch.manual_seed(seed)
    model = import_callable(TINY_MLP, base_dir=Path("."), key="model.factory")()
    with tempfile.TemporaryDirectory() as tmp:
        ckpts = []
        for epoch in range(1, epochs + 1):
            for batch in torch.arange(n).split(20):
                loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
                with torch.no_grad():
                    for param, grad in zip(model.parameters(), torch.autograd.grad(loss, list(model.parameters()))):
                        param -= 0.1 * grad
            if epoch % (epochs // 3) == 0:
                ckpts.append({"path": f"{tmp}/epoch{epoch}.pt"})
                torch.save({"state_dict": model.state_dict(), "learning_rate": 0.1}, ckpts[-1]["path"])
        torch.save({"inputs": x, "labels": y}, f"{tmp}/train.pt")
        recipe = {"model": {"factory": TINY_MLP}, "checkpoints": ckpts,
                  "data": {"train": {"format": "tensors", "path": "train.pt"}}, "dtype": "float64", "device": "cpu"}
        Path(tmp, "recipe.yaml").write_text(yaml.safe_dump(recipe))
        signals, _, _, _ = compute_signals(Session.from_recipe(load_recipe(Path(tmp, "recipe.yaml"))),
                                        {MislabelMethod.COMBINED})
    flipped = torch.zeros(n, dtype=torch.bool)
    flipped[flips] = True
    return {"sep": sep, "n": n, "epochs": epochs, "seed": seed, "rate": rate,
            "flags": auto_flags(signals, flipped, (MislabelMethod.COMBINED,))}


def blobs_table(rows: list[dict]) -> str:
    """Per separation and flip rate: mean and max flagged of each rule, precision/recall when noisy."""
    lines = ["| separation | flipped | rule | flagged (mean) | flagged (max) | max share of N | precision | recall |",
             "|---|---|---|---|---|---|---|---|"]
    for (sep, rate), group in itertools.groupby(sorted(rows, key=lambda r: (r["sep"], r["rate"])),
                                                key=lambda r: (r["sep"], r["rate"])):
        group = list(group)
        for name in group[0]["flags"]:
            flags = [r["flags"][name] for r in group]
            share = max(f["flagged"] / r["n"] for f, r in zip(flags, group))
            pr = [f"{mean(f[k] for f in flags):.3f}" if k in flags[0] else "" for k in ("precision", "recall")]
            lines.append(f"| {sep:g} | {rate:.0%} | {name} | {mean(f['flagged'] for f in flags):.1f} | "
                         f"{max(f['flagged'] for f in flags):.0f} | {share:.3f} | {' | '.join(pr)} |")
    return "\n".join(lines)


def table(rows: list[dict], section: str, arch: str | None, noise: str | None) -> str:
    """Markdown table of mean ± std over the rows matching ``arch``/``noise`` (None: all noisy
    rows); the ``flagged`` column also gives the largest count."""
    sel = [r for r in rows if arch in (None, r["arch"])
           and (r["noise"] == noise if noise is not None else r["noise"] != "clean")]
    names = list(sel[0][section])
    cols = list(sel[0][section][names[0]])
    lines = ["| " + " | ".join(["method", *cols]) + " |", "|" + "---|" * (len(cols) + 1)]
    for name in names:
        cells = []
        for col in cols:
            vals = [r[section][name][col] for r in sel]
            cells.append(f"{mean(vals):.1f} (max {max(vals):.0f})" if col == "flagged"
                         else f"{mean(vals):.2%} (max {max(vals):.2%})" if col == "share"
                         else f"{mean(vals):.3f} ± {pstdev(vals):.3f}")
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)


def run_all(archs: list[str], noises: list[str], seeds: int, with_cleanlab: bool, out: Path | None) -> list[dict]:
    """Every (arch, noise, seed) run on one torch thread; rows are saved to ``out`` as they finish."""
    torch.set_num_threads(1)
    rows = []
    for arch in archs:
        for noise in noises:
            for seed in range(seeds):
                start = time.perf_counter()
                rows.append(run_one(arch, noise, seed, TrainSchedule(), with_cleanlab))
                print(f"# {arch} {noise} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
                if out:
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text(json.dumps(rows, indent=1))
    return rows


def run_blobs(out: Path | None) -> list[dict]:
    """The blob grid: separations 3/4/6/8, N 240/600, 15/30 epochs, seeds 0-2, 0% and 15% flipped."""
    torch.set_num_threads(1)
    rows = [blob_run(*setting) for setting in itertools.product((3.0, 4.0, 6.0, 8.0), (240, 600), (15, 30),
                                                                  range(3), (0.0, 0.15))]
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=1))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--archs", nargs="+", default=["cnn", "mlp"], choices=["cnn", "mlp"])
    parser.add_argument("--noise", nargs="+", default=["uniform", "pairs"], choices=["uniform", "pairs", "clean"],
                        help="clean: no label flipped (counts false alarms)")
    parser.add_argument("--no-cleanlab", action="store_true", help="skip the 5-fold cleanlab baseline")
    parser.add_argument("--blobs", action="store_true", help="run the check tests' blob grid instead of digits")
    parser.add_argument("--out", type=Path, help="also write every row as JSON here")
    parser.add_argument("--tables-from", type=Path, nargs="+",
                        help="print the tables from rows saved by earlier --out runs (runs nothing)")
    args = parser.parse_args()
    if args.blobs:
        print(blobs_table(run_blobs(args.out)))
        return
    if args.tables_from:
        rows = [r for f in args.tables_from for r in json.loads(f.read_text())]
        args.archs, args.noise = sorted({r["arch"] for r in rows}), sorted({r["noise"] for r in rows})
        args.seeds = len({r["seed"] for r in rows})
    else:
        rows = run_all(args.archs, args.noise, args.seeds, not args.no_cleanlab, args.out)
    noisy = [n for n in args.noise if n != "clean"]
    if noisy:
        n_runs = sum(r["noise"] != "clean" for r in rows)
        print(f"\n## All settings ({n_runs} runs: {', '.join(args.archs)} × {', '.join(noisy)} × {args.seeds} seeds)"
              f"\n\n{table(rows, 'ranking', None, None)}\n\n{table(rows, 'flags', None, None)}")
    if "clean" in args.noise:
        print(f"\n## Clean labels (nothing flipped): flags = false alarms\n\n{table(rows, 'flags', None, 'clean')}")
    for arch in args.archs:
        for noise in noisy:
            print(f"\n### {arch}, {noise} noise\n\n{table(rows, 'ranking', arch, noise)}")
        if "clean" in args.noise:
            print(f"\n### {arch}, clean labels\n\n{table(rows, 'flags', arch, 'clean')}")


if __name__ == "__main__":
    main()
