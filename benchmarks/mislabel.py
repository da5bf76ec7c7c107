"""Mislabel-detection benchmark: the demo setting over seeds × noise kinds × architectures.

For each (architecture, noise, seed): build the digits run of :mod:`influence_cli.demo` (10% of
the 1,500 training labels flipped: ``uniform`` to a random other class, or ``pairs`` 1↔7, 3↔8,
4↔9, 2↔5, 0↔6), compute every :class:`~influence_cli.audits.mislabel.MislabelMethod` through the
library, and compare with cleanlab: self-confidence p̂_y from 5-fold out-of-sample probabilities
of the same architecture and training schedule (``cleanlab.rank.get_label_quality_scores``
ranks all N; ``cleanlab.filter.find_label_issues`` gives its flagged set).

Prints per method the mean ± std over seeds of recall@10%, recall@20% (share of the flipped
labels among the first 10% / 20% of the ranking), AUPRC and AUROC, and for each flag rule
(our automatic cut, cleanlab's ``find_label_issues``) how many were flagged, precision, recall.

    python benchmarks/mislabel.py --seeds 5 --out benchmarks/results/mislabel.json

cleanlab is a benchmark-only dependency: ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from statistics import mean, pstdev

import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from influence_cli.audits.mislabel import AUTO_Z, POSITIVE_SIGNALS, MislabelMethod, combine, compute_signals, robust_z
from influence_cli.demo import TrainSchedule, make_digits_run, train_model
from influence_cli.recipe import load_recipe
from influence_cli.session import Session


def ranking_metrics(scores: torch.Tensor, flipped: torch.Tensor) -> dict[str, float]:
    """recall@10%, recall@20%, AUPRC, AUROC of ``flipped`` (0/1) under ``scores`` (high = suspect)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    n, pos = len(scores), float(flipped.sum())
    out = {f"recall@{int(f * 100)}%": float(flipped[order[: round(f * n)]].sum()) / pos for f in (0.1, 0.2)}
    out["AUPRC"] = float(average_precision_score(flipped.numpy(), scores.numpy()))
    out["AUROC"] = float(roc_auc_score(flipped.numpy(), scores.numpy()))
    return out


def flag_metrics(flagged: torch.Tensor, flipped: torch.Tensor) -> dict[str, float]:
    """Count, precision and recall of a boolean ``flagged`` mask."""
    hits = float(flipped[flagged].sum())
    return {"flagged": float(flagged.sum()), "precision": hits / max(float(flagged.sum()), 1.0),
            "recall": hits / float(flipped.sum())}


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
    with tempfile.TemporaryDirectory() as tmp:
        path, data = make_digits_run(Path(tmp), seed=seed, arch=arch, noise=noise, schedule=schedule)
        session = Session.from_recipe(load_recipe(path))
        signals, _, _ = compute_signals(session, set(MislabelMethod))
    flipped = torch.zeros(len(data.labels))
    flipped[data.flipped] = 1
    row: dict = {"arch": arch, "noise": noise, "seed": seed, "ranking": {}, "flags": {}}
    for method in MislabelMethod:
        scores = combine(signals, method)
        row["ranking"][method.value] = ranking_metrics(scores, flipped)
        row["flags"][f"{method.value} auto"] = flag_metrics(robust_z(scores, method in POSITIVE_SIGNALS) > AUTO_Z,
                                                            flipped.bool())
    if with_cleanlab:
        suspicion, issues = cleanlab_scores(arch, data.train_x, data.labels, seed=seed, schedule=schedule)
        row["ranking"]["cleanlab"] = ranking_metrics(suspicion, flipped)
        row["flags"]["cleanlab find_label_issues"] = flag_metrics(issues, flipped.bool())
    return row


def table(rows: list[dict], section: str, arch: str | None, noise: str | None) -> str:
    """Markdown table of mean ± std over the rows matching ``arch``/``noise`` (None: all)."""
    sel = [r for r in rows if arch in (None, r["arch"]) and noise in (None, r["noise"])]
    names = list(sel[0][section])
    cols = list(sel[0][section][names[0]])
    lines = ["| " + " | ".join(["method", *cols]) + " |", "|" + "---|" * (len(cols) + 1)]
    for name in names:
        cells = []
        for col in cols:
            vals = [r[section][name][col] for r in sel]
            cells.append(f"{mean(vals):.1f}" if col == "flagged" else f"{mean(vals):.3f} ± {pstdev(vals):.3f}")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--archs", nargs="+", default=["cnn", "mlp"], choices=["cnn", "mlp"])
    parser.add_argument("--noise", nargs="+", default=["uniform", "pairs"], choices=["uniform", "pairs"])
    parser.add_argument("--no-cleanlab", action="store_true", help="skip the 5-fold cleanlab baseline")
    parser.add_argument("--out", type=Path, help="also write every row as JSON here")
    parser.add_argument("--tables-from", type=Path, nargs="+",
                        help="print the tables from rows saved by earlier --out runs (runs nothing)")
    args = parser.parse_args()
    if args.tables_from:
        rows = [r for f in args.tables_from for r in json.loads(f.read_text())]
        args.archs, args.noise = sorted({r["arch"] for r in rows}), sorted({r["noise"] for r in rows})
        args.seeds = len({r["seed"] for r in rows})
    else:
        rows = run_all(args.archs, args.noise, args.seeds, not args.no_cleanlab, args.out)
    print(f"\n## All settings ({len(rows)} runs: {', '.join(args.archs)} × {', '.join(args.noise)} × "
          f"{args.seeds} seeds)\n\n{table(rows, 'ranking', None, None)}\n\n{table(rows, 'flags', None, None)}")
    for arch in args.archs:
        for noise in args.noise:
            print(f"\n### {arch}, {noise} noise\n\n{table(rows, 'ranking', arch, noise)}")


if __name__ == "__main__":
    main()
