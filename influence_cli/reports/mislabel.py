"""Reports of ``mislabel-detect``: ``mislabels.json`` (the stable interface), ``mislabels.csv``
and ``summary.md``."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from influence_cli.audits.mislabel import MislabelResult
from influence_cli.files import write_json
from influence_cli.loading.examples import DESCRIPTION_KEYS, label_text
from influence_cli.reports.entries import TERMINAL_CHARS, DescriptionColumn, with_names, write_rows
from influence_cli.reports.files import markdown_table, write_summary

_COLUMNS = ("rank", "train_index", "score", *with_names("given_label", "suggested_label"), "suggested_prob", "flagged",
            *DESCRIPTION_KEYS)


def write_mislabel_reports(result: MislabelResult, out: Path) -> list[Path]:
    """Write every ``mislabel-detect`` report into ``out``; returns the paths written."""
    data = result.to_dict()
    return [
        write_json(out / "mislabels.json", data),
        write_rows(out / "mislabels.csv", _COLUMNS, data["ranking"]),
        write_summary(out, "mislabel-detect", _summary(data)),
    ]


def _summary(data: dict, rows: int = 50) -> str:
    rule = data["flag_rule"]
    flagged = [e for e in data["ranking"] if e["flagged"]]
    changed = sum(e["suggested_label"] != e["given_label"] for e in flagged)
    lines = [f"# Suspected mislabels ({data['method']})", "",
             f"{data['n_flagged']} of {data['n_train']} training examples flagged by {rule['description']}; "
             f"for {changed} of them the final checkpoint prefers another label.", ""]
    shown = data["ranking"][: max(min(rows, data["n_flagged"]), 10)]
    text = DescriptionColumn.of(shown)
    lines.append(markdown_table(["rank", "train index", "score", "given", "suggested", "prob", "flagged", *text.header],
                                [(e["rank"], e["train_index"], e["score"], label_text(e, "given_label"),
                                  label_text(e, "suggested_label"), e["suggested_prob"], "yes" if e["flagged"] else "",
                                  *text.cells(e)) for e in shown]))
    if data["n_flagged"] > len(shown):
        lines.append(f"... and {data['n_flagged'] - len(shown)} more flagged examples in mislabels.csv\n")
    return "\n".join(lines)


def suspects_table(result: MislabelResult, rows: int = 15) -> Table:
    """The most suspicious examples as a rich table."""
    data = result.to_dict()
    shown = data["ranking"][:rows]
    text = DescriptionColumn.of(shown, TERMINAL_CHARS)
    table = Table(title=f"Suspected mislabels ({data['method']}): {data['n_flagged']} of {data['n_train']} flagged, "
                        f"top {len(shown)} shown")
    for col in ("rank", "train index", "score", "given", "suggested (prob)", "flagged"):
        table.add_column(col)
    text.add_to(table)
    for e in shown:
        table.add_row(str(e["rank"]), str(e["train_index"]), f"{e['score']:.4g}", str(label_text(e, "given_label")),
                      f"{label_text(e, 'suggested_label')} ({e['suggested_prob']:.2f})", "yes" if e["flagged"] else "",
                      *text.cells(e))
    return table
