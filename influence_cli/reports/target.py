"""Reports of ``target-identify``: ``targets.json`` (the stable interface), ``targets.csv``,
``summary.md`` and ``suspects.txt`` (one training index per line: what to remove before retraining)."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from influence_cli.audits.target import TargetResult
from influence_cli.files import atomic_write, write_json
from influence_cli.reports.files import markdown_table, write_csv, write_summary

_COLUMNS = ("rank", "test_index", "anomaly_score", "flagged", "label", "prediction", "n_suspects")


def write_target_reports(result: TargetResult, out: Path) -> list[Path]:
    """Write every ``target-identify`` report into ``out``; returns the paths written."""
    data = result.to_dict()
    rows = [(t["rank"], t["test_index"], t["anomaly_score"], t["flagged"], t["label"], t["prediction"],
             len(t["suspects"]))
            for t in data["test"]]
    suspects = sorted({s["train_index"] for t in data["test"] for s in t["suspects"]})
    return [
        write_json(out / "targets.json", data),
        write_csv(out / "targets.csv", _COLUMNS, rows),
        write_summary(out, "target-identify",
                      _summary(data, result)),
        atomic_write(out / "suspects.txt", "".join(f"{i}\n" for i in suspects)),
    ]


def _summary(data: dict, result: TargetResult, rows: int = 10) -> str:
    flagged = [t for t in data["test"] if t["flagged"]]
    lines = [f"# Attack targets ({data['method']})", "",
             f"{len(flagged)} of {len(data['test'])} candidate test example(s) flagged "
             f"(anomaly score, a median/MAD z-score over the candidates, > {result.threshold:g}, or "
             f"> {result.share_threshold:g} with more than {result.min_share:.0%} of the top-k proponents its own"
             f"{', and prediction ≠ label' if result.misclassified_only else ''}).", "",
             markdown_table(["rank", "test index", "anomaly score", "label", "prediction", "suspects", "flagged"],
                            [(t["rank"], t["test_index"], t["anomaly_score"], t["label"], t["prediction"],
                              len(t["suspects"]),
                              "yes" if t["flagged"] else "") for t in data["test"][:max(rows, len(flagged))]])]
    for t in flagged:
        lines.append(f"## Test example {t['test_index']} (prediction {t['prediction']}): "
                     f"{len(t['suspects'])} suspected attack example(s)\n")
        lines.append(markdown_table(["train index", "score", "label"],
                                    [(s["train_index"], s["score"], s["label"]) for s in t["suspects"]]))
    return "\n".join(lines)


def targets_table(result: TargetResult, rows: int = 5) -> Table:
    """The candidates ranked by anomaly (every flagged one, at least ``rows``), as a rich table."""
    data = result.to_dict()
    n_flagged = sum(t["flagged"] for t in data["test"])
    table = Table(title=f"Attack targets ({data['method']}): {n_flagged} of {len(data['test'])} candidates flagged")
    for col in ("rank", "test index", "anomaly score", "label", "prediction", "flagged", "top suspects (index:score)"):
        table.add_column(col)
    for t in data["test"][:max(rows, n_flagged)]:
        top = ", ".join(f"{s['train_index']}:{s['score']:.3g}" for s in t["suspects"][:4])
        table.add_row(str(t["rank"]), str(t["test_index"]), f"{t['anomaly_score']:.2f}", str(t["label"]),
                      str(t["prediction"]),
                      "yes" if t["flagged"] else "", top + (" ..." if len(t["suspects"]) > 4 else ""))
    return table
