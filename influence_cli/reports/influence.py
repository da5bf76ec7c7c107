"""Reports of ``score``: ``influence.json`` (the stable interface), ``influence.csv``,
``summary.md`` and, on request, the full matrix as ``scores.safetensors``."""

from __future__ import annotations

from html import escape
from pathlib import Path

from rich.table import Table

from influence_cli.files import atomic_write, write_json
from influence_cli.reports.files import markdown_table, write_csv, write_summary
from influence_cli.scoring import InfluenceResult


def write_influence_reports(result: InfluenceResult, out: Path) -> list[Path]:
    """Write every ``score`` report into ``out``; returns the paths written."""
    data = result.to_dict()
    written = [write_json(out / "influence.json", data)]
    rows = [(t["test_index"], t["label"], t["prediction"], side, rank, e["train_index"], e["score"], e["label"])
            for t in data["test"] for side in ("proponents", "opponents")
            for rank, e in enumerate(t[side], start=1)]
    written.append(write_csv(out / "influence.csv", ["test_index", "test_label", "prediction", "side", "rank",
                                                     "train_index", "score", "train_label"], rows))
    written.append(write_summary(out, "score", _summary(data)))
    if result.passes.matrix is not None:
        from safetensors.torch import save

        matrix = result.passes.matrix.contiguous()
        blob = save({"scores": matrix, "test_indices": result.test_indices.contiguous(),
                     "train_indices": result.passes.indices.contiguous()},
                    metadata={"method": str(result.method), "layout": "test x train"})
        written.append(atomic_write(out / "scores.safetensors", blob))
    return written


def _summary(data: dict) -> str:
    ckpts = markdown_table(["checkpoint", "learning rate"],
                           [(c["path"], c["learning_rate"]) for c in data["checkpoints"]])
    lines = [f"# Influence ({data['method']})", "", f"{len(data['test'])} test example(s); "
             f"{len(data['checkpoints'])} checkpoint(s).", "", ckpts]
    for t in data["test"][:20]:
        lines.append(f"## Test example {t['test_index']} (label {t['label']}, prediction {t['prediction']})\n")
        if _described(t):
            lines.append(f"{escape(_described(t), quote=False)}\n")  # Markdown renders raw HTML
        best = max(len(t["proponents"]), len(t["opponents"]))
        rows = []
        for r in range(min(best, 5)):
            p = t["proponents"][r] if r < len(t["proponents"]) else None
            o = t["opponents"][r] if r < len(t["opponents"]) else None
            rows.append((r + 1, *(("", "", "") if p is None else (_cell(p), p["label"], p["score"])),
                         *(("", "", "") if o is None else (_cell(o), o["label"], o["score"]))))
        lines.append(markdown_table(["rank", "proponent", "label", "score", "opponent", "label", "score"], rows))
    if len(data["test"]) > 20:
        lines.append(f"... and {len(data['test']) - 20} more test examples in influence.json\n")
    return "\n".join(lines)


DESCRIPTION_KEYS = ("text", "path", "description")  # what Examples.describe may add to an entry
CELL_CHARS = 60


def _described(entry: dict) -> str | None:
    """The entry's text or file path (see ``Examples.describe``), if it has one."""
    return next((str(entry[k]) for k in DESCRIPTION_KEYS if k in entry), None)


def _cell(entry: dict) -> str:
    """A ranked example as ``index`` or ``index: text…`` (shortened to fit a table cell)."""
    text = _described(entry)
    if text is None:
        return str(entry["train_index"])
    text = text if len(text) <= CELL_CHARS else text[:CELL_CHARS - 1] + "…"
    return f"{entry['train_index']}: {text}"


def influence_table(result: InfluenceResult, rows: int = 5, per_side: int = 3) -> Table:
    """The first test examples with their top proponents and opponents, as a rich table."""
    data = result.to_dict()
    table = Table(title=f"Influence ({data['method']}), first {min(rows, len(data['test']))} test examples")
    for col in ("test", "label", "pred", "top proponents (index:score)", "top opponents (index:score)"):
        table.add_column(col)
    for t in data["test"][:rows]:
        fmt = lambda side: ", ".join(f"{e['train_index']}:{e['score']:.3g}" for e in t[side][:per_side])  # noqa: E731
        table.add_row(str(t["test_index"]), str(t["label"]), str(t["prediction"]), fmt("proponents"), fmt("opponents"))
    return table
