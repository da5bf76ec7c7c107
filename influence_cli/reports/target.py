"""Reports of ``target-identify``: ``targets.json`` (the stable interface), ``targets.csv``,
``summary.md`` and ``suspects.txt`` (one training index per line: what to remove before retraining)."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from influence_cli.audits.target import TargetResult
from influence_cli.files import atomic_write, write_json
from influence_cli.loading.examples import DESCRIPTION_KEYS, label_text
from influence_cli.reports.entries import TERMINAL_CHARS, DescriptionColumn, cell, with_names, write_rows
from influence_cli.reports.files import markdown_table, write_summary

_COLUMNS = ("rank", "test_index", "anomaly_score", "flagged", *with_names("label", "prediction"), "n_suspects",
            *DESCRIPTION_KEYS)


def write_target_reports(result: TargetResult, out: Path) -> list[Path]:
    """Write every ``target-identify`` report into ``out``; returns the paths written."""
    data = result.to_dict()
    rows = [{**t, "n_suspects": len(t["suspects"])} for t in data["test"]]
    suspects = sorted({s["train_index"] for t in data["test"] for s in t["suspects"]})
    return [
        write_json(out / "targets.json", data),
        write_rows(out / "targets.csv", _COLUMNS, rows),
        write_summary(out, "target-identify",
                      _summary(data, result)),
        atomic_write(out / "suspects.txt", "".join(f"{i}\n" for i in suspects)),
    ]


def _summary(data: dict, result: TargetResult, rows: int = 10) -> str:
    flagged = [t for t in data["test"] if t["flagged"]]
    shown = data["test"][:max(rows, len(flagged))]
    text = DescriptionColumn.of(shown)
    lines = [f"# Attack targets ({data['method']})", "",
             f"{len(flagged)} of {len(data['test'])} candidate test example(s) flagged "
             f"(anomaly score, a median/MAD z-score over the candidates, > {result.threshold:g}, or "
             f"> {result.share_threshold:g} with more than {result.min_share:.0%} of the top-k proponents its own"
             f"{', and prediction ≠ label' if result.misclassified_only else ''}).", "",
             markdown_table(["rank", "test index", "anomaly score", "label", "prediction", "suspects", "flagged",
                             *text.header],
                            [(t["rank"], t["test_index"], t["anomaly_score"], label_text(t, "label"),
                              label_text(t, "prediction"), len(t["suspects"]), "yes" if t["flagged"] else "",
                              *text.cells(t)) for t in shown])]
    for t in flagged:
        lines.append(f"## Test example {t['test_index']} (prediction {label_text(t, 'prediction')}): "
                     f"{len(t['suspects'])} suspected attack example(s)\n")
        lines.append(markdown_table(["train index", "score", "label"],
                                    [(cell(s), s["score"], label_text(s, "label")) for s in t["suspects"]]))
    return "\n".join(lines)


def targets_table(result: TargetResult, rows: int = 5) -> Table:
    """The candidates ranked by anomaly (every flagged one, at least ``rows``), as a rich table."""
    data = result.to_dict()
    n_flagged = sum(t["flagged"] for t in data["test"])
    shown = data["test"][:max(rows, n_flagged)]
    text = DescriptionColumn.of(shown, TERMINAL_CHARS)
    table = Table(title=f"Attack targets ({data['method']}): {n_flagged} of {len(data['test'])} candidates flagged")
    for col in ("rank", "test index", "anomaly score", "label", "prediction", "flagged"):
        table.add_column(col)
    text.add_to(table)
    table.add_column("top suspects (index:score)")
    for t in shown:
        top = ", ".join(f"{s['train_index']}:{s['score']:.3g}" for s in t["suspects"][:4])
        table.add_row(str(t["rank"]), str(t["test_index"]), f"{t['anomaly_score']:.2f}", str(label_text(t, "label")),
                      str(label_text(t, "prediction")), "yes" if t["flagged"] else "", *text.cells(t),
                      top + (" ..." if len(t["suspects"]) > 4 else ""))
    return table
