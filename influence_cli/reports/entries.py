"""How the report writers show an example, one way for all of them: labels with their class names
(:func:`~influence_cli.loading.examples.label_text`), a text or file path shortened to fit a cell
(:func:`~influence_cli.loading.examples.shortened`), and CSV columns for both.

A CSV has a column per field of its rows; a label's ``<column>_name`` and the description columns
(``text``, ``path``; ``test_text``, ``train_path``... in ``influence.csv``) appear only when the
data has them, so a run on unnamed tensors keeps its plain layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from rich.table import Table

from influence_cli.loading.examples import DESCRIPTION_KEYS, described, shortened
from influence_cli.reports.files import write_csv

CELL_CHARS = 60       # a text or path in a Markdown table cell
TERMINAL_CHARS = 32   # ... in a terminal table
LINE_CHARS = 80       # ... in a line of text (check offenders)


def cell(entry: Mapping[str, Any], index_key: str = "train_index", chars: int = CELL_CHARS) -> str:
    """An example in one table cell: ``index`` or ``index: text…`` / ``index: …/cat/012.png``."""
    text = shortened(entry, chars)
    return str(entry[index_key]) if text is None else f"{entry[index_key]}: {text}"


def method_note(doc: Mapping[str, Any]) -> str:
    """How a results document's method used the checkpoints, for the reports' headings: ``ekfac``/``arnoldi``
    use the final checkpoint unless ``curvature: {checkpoints: all}``, and may be renormalised."""
    if doc.get("method") not in ("ekfac", "arnoldi"):
        return ""
    spec = (doc.get("recipe") or {}).get("curvature") or {}
    where = "summed over the checkpoints with η_c" if spec.get("checkpoints") == "all" else "final checkpoint only"
    return f" ({where}{', renormalised: a cosine in the curvature metric' if spec.get('renormalize') else ''})"


def line_item(entry: Mapping[str, Any], index_key: str = "train_index") -> str:
    """An example in a line of text: ``index``, ``index "text…"`` or ``index /the/whole/path.png``."""
    found = described(entry)
    if found is None:
        return str(entry[index_key])
    text = shortened(entry, LINE_CHARS, whole_path=True)
    return f"{entry[index_key]} {text}" if found[0] == "path" else f'{entry[index_key]} "{text}"'


@dataclass(frozen=True)
class DescriptionColumn:
    """A table's text or path column (titled ``text``, ``path``...), shortened to ``chars``; no
    column at all when none of the table's entries has a description."""

    title: str | None
    chars: int
    whole_path: bool = False

    @classmethod
    def of(cls, entries: Sequence[Mapping[str, Any]], chars: int = CELL_CHARS,
           whole_path: bool = False) -> "DescriptionColumn":
        title = next((k for k in DESCRIPTION_KEYS if any(e.get(k) is not None for e in entries)), None)
        return cls(title, chars, whole_path)

    @property
    def header(self) -> list[str]:
        return [] if self.title is None else [self.title]

    def cells(self, entry: Mapping[str, Any]) -> list[str]:
        return [] if self.title is None else [shortened(entry, self.chars, self.whole_path) or ""]

    def add_to(self, table: Table) -> None:
        """The column of a terminal table: folded over lines rather than cut (its cells are short already)."""
        if self.title is not None:
            table.add_column(self.title, overflow="fold")


def _optional(column: str) -> bool:
    return column.endswith("_name") or column.rsplit("_", 1)[-1] in DESCRIPTION_KEYS


def write_rows(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> Path:
    """``rows`` as CSV: every column of ``columns``, but names and descriptions only when a row has them."""
    present = {k for row in rows for k in row}
    header = [c for c in columns if not _optional(c) or c in present]
    return write_csv(path, header, ([row.get(c) for c in header] for row in rows))


def with_names(*labels: str) -> tuple[str, ...]:
    """Each label column followed by its ``<label>_name`` column."""
    return tuple(k for label in labels for k in (label, f"{label}_name"))


def pick(entry: Mapping[str, Any], keys: Sequence[str], prefix: str = "") -> dict[str, Any]:
    """``{prefix + key: value}`` for the ``keys`` that ``entry`` has (one side of an ``influence.csv`` row)."""
    return {f"{prefix}{k}": entry[k] for k in keys if k in entry}
