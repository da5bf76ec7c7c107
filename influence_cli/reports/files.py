"""Report files: CSV, Markdown tables and the per-command sections of ``summary.md``, all written
atomically (:mod:`influence_cli.files`)."""

from __future__ import annotations

import csv
import io
from html import escape
from pathlib import Path
from typing import Any, Iterable, Sequence

from influence_cli.files import atomic_write, folder_lock


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write(path, buf.getvalue())


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    """A table cell: text from the data has its HTML-special characters escaped (Markdown renders raw HTML)."""
    return f"{value:.4g}" if isinstance(value, float) else escape(str(value), quote=False).replace("|", "\\|")


def write_summary(out: Path, command: str, markdown: str) -> Path:
    """Write ``command``'s section of ``out/summary.md``, keeping other commands' sections.

    Commands that share an output folder (``score``, ``mislabel-detect``, ``target-identify``,
    as in the demo) each own one section, delimited by HTML comments, so none overwrites another,
    even when they run at the same time (the update holds the folder's lock).
    """
    begin, end = f"<!-- influence-cli:{command} -->", f"<!-- /influence-cli:{command} -->"
    path = out / "summary.md"
    section = f"{begin}\n{markdown.rstrip()}\n{end}\n"
    with folder_lock(out):
        text = path.read_text() if path.is_file() else ""
        if begin in text and end in text:
            head, _, rest = text.partition(begin)
            _, _, tail = rest.partition(end)
            text = head + section.rstrip("\n") + tail
        else:
            text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + section
        return atomic_write(path, text)
