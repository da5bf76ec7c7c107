"""Reports of ``score``: ``influence.json`` (the stable interface), ``influence.csv``,
``summary.md`` and, on request, the full matrix as ``scores.safetensors``."""

from __future__ import annotations

from html import escape
from pathlib import Path

from rich.table import Table

from influence_cli.files import atomic_write, write_json
from influence_cli.loading.examples import DESCRIPTION_KEYS, described, label_text
from influence_cli.reports.entries import (TERMINAL_CHARS, DescriptionColumn, cell, method_note, pick, with_names,
                                           write_rows)
from influence_cli.reports.files import markdown_table, write_summary
from influence_cli.scoring import InfluenceResult

_EXAMPLE = with_names("label") + DESCRIPTION_KEYS  # a test example's or a neighbour's columns, prefixed test_/train_
_COLUMNS = ("test_index", *(f"test_{k}" for k in with_names("label")), *with_names("prediction"),
            *(f"test_{k}" for k in DESCRIPTION_KEYS), "side", "rank", "train_index", "score",
            *(f"train_{k}" for k in _EXAMPLE))


def write_influence_reports(result: InfluenceResult, out: Path) -> list[Path]:
    """Write every ``score`` report into ``out``; returns the paths written."""
    data = result.to_dict()
    written = [write_json(out / "influence.json", data)]
    rows = [{"test_index": t["test_index"], **pick(t, _EXAMPLE, "test_"), **pick(t, with_names("prediction")),
             "side": side, "rank": rank, "train_index": e["train_index"], "score": e["score"],
             **pick(e, _EXAMPLE, "train_")}
            for t in data["test"] for side in ("proponents", "opponents") for rank, e in enumerate(t[side], start=1)]
    written.append(write_rows(out / "influence.csv", _COLUMNS, rows))
    written.append(write_summary(out, "score", _summary(data)))
    if result.passes.matrix is not None:
        from safetensors.torch import save

        matrix = result.passes.matrix.contiguous()
        blob = save({"scores": matrix, "test_indices": result.test_indices.contiguous(),
                     "train_indices": result.passes.indices.contiguous()},
                    metadata={"method": str(result.method), "layout": "test x train"})
        written.append(atomic_write(out / "scores.safetensors", blob))
    return written


def _labeled(tests: list[dict]) -> bool:
    """Whether the entries carry labels (a causal LM's text examples have none)."""
    return any("label" in t for t in tests)


def _side_cells(entry: dict | None, labeled: bool) -> tuple:
    """A neighbour's summary cells: index and text, label (when the data has labels), score."""
    if entry is None:
        return ("",) * (3 if labeled else 2)
    return (cell(entry), label_text(entry, "label"), entry["score"]) if labeled else (cell(entry), entry["score"])


def checkpoint_rows(checkpoints: list[dict]) -> tuple[list[str], list[tuple]]:
    """(header, rows) of the checkpoint table: path, learning rate and, when measured, the training fit,
    the share of the checkpoint sum and whether the checkpoint is under-trained
    (:mod:`influence_cli.checkpoint_fit`)."""
    extra = [k for k in ("fit", "share") if any(k in c for c in checkpoints)]
    pct = lambda v: "" if v is None else f"{v:.0%}"  # noqa: E731
    rows = [(c["path"], c["learning_rate"], *(pct(c.get(k)) for k in extra),
             *(["under-trained" if c.get("under_trained") else ""] if extra else [])) for c in checkpoints]
    names = {"fit": "training labels fit", "share": "share of the sum"}
    return ["checkpoint", "learning rate", *(names[k] for k in extra), *([""] if extra else [])], rows


def _summary(data: dict) -> str:
    ckpts = markdown_table(*checkpoint_rows(data["checkpoints"]))
    lines = [f"# Influence ({data['method']}{method_note(data)})", "", f"{len(data['test'])} test example(s); "
             f"{len(data['checkpoints'])} checkpoint(s).", "", ckpts]
    labeled = _labeled(data["test"])
    for t in data["test"][:20]:
        labels = f" (label {label_text(t, 'label')}, prediction {label_text(t, 'prediction')})" if labeled else ""
        lines.append(f"## Test example {t['test_index']}{labels}\n")
        found = described(t)
        if found is not None:
            lines.append(f"{escape(found[1], quote=False)}\n")  # Markdown renders raw HTML
        best = max(len(t["proponents"]), len(t["opponents"]))
        rows = []
        for r in range(min(best, 5)):
            p = t["proponents"][r] if r < len(t["proponents"]) else None
            o = t["opponents"][r] if r < len(t["opponents"]) else None
            rows.append((r + 1, *_side_cells(p, labeled), *_side_cells(o, labeled)))
        label = ["label"] if labeled else []
        lines.append(markdown_table(["rank", "proponent", *label, "score", "opponent", *label, "score"], rows))
    if len(data["test"]) > 20:
        lines.append(f"... and {len(data['test']) - 20} more test examples in influence.json\n")
    return "\n".join(lines)


def influence_table(result: InfluenceResult, rows: int = 5, per_side: int = 3) -> Table:
    """The first test examples with their top proponents and opponents, as a rich table."""
    data = result.to_dict()
    shown = data["test"][:rows]
    text = DescriptionColumn.of(shown, TERMINAL_CHARS)
    table = Table(title=f"Influence ({data['method']}), first {len(shown)} test examples")
    labeled = _labeled(shown)
    for col in ("test", "label", "pred") if labeled else ("test",):
        table.add_column(col)
    text.add_to(table)
    for col in ("top proponents (index:score)", "top opponents (index:score)"):
        table.add_column(col)
    for t in shown:
        fmt = lambda side: ", ".join(f"{e['train_index']}:{e['score']:.3g}" for e in t[side][:per_side])  # noqa: E731
        labels = (str(label_text(t, "label")), str(label_text(t, "prediction"))) if labeled else ()
        table.add_row(str(t["test_index"]), *labels, *text.cells(t), fmt("proponents"), fmt("opponents"))
    return table
