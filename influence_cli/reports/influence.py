"""Reports of ``score``: ``influence.json`` (the stable interface), ``influence.csv``,
``summary.md`` and, on request, the full matrix as ``scores.safetensors``."""

from __future__ import annotations

from pathlib import Path

from influence_cli.reports.files import atomic_write, markdown_table, write_csv, write_json
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
    written.append(atomic_write(out / "summary.md", _summary(data)))
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
        best = max(len(t["proponents"]), len(t["opponents"]))
        rows = []
        for r in range(min(best, 5)):
            p = t["proponents"][r] if r < len(t["proponents"]) else None
            o = t["opponents"][r] if r < len(t["opponents"]) else None
            rows.append((r + 1, *(("", "", "") if p is None else (p["train_index"], p["label"], p["score"])),
                         *(("", "", "") if o is None else (o["train_index"], o["label"], o["score"]))))
        lines.append(markdown_table(["rank", "proponent", "label", "score", "opponent", "label", "score"], rows))
    if len(data["test"]) > 20:
        lines.append(f"... and {len(data['test']) - 20} more test examples in influence.json\n")
    return "\n".join(lines)
