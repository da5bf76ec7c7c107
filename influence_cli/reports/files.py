"""Atomic report files: every report is written to ``<name>.part`` and renamed into place, so a
crash or Ctrl-C never leaves a half-written report behind."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from influence_cli import distributed
from influence_cli.errors import InfluenceError


def atomic_write(path: Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``.

    Under ``torchrun`` every rank computes the same reports and only rank 0 writes them (W ranks
    writing one ``.part`` file on a shared disk would race); other ranks return ``path`` unwritten.
    """
    if not distributed.is_main():
        return path
    tmp = path.with_name(path.name + ".part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp.parent.is_dir():
            tmp.unlink(missing_ok=True)
        raise InfluenceError(f"{path}: cannot write the report: {exc.strerror or exc}") from None
    return path


def write_json(path: Path, obj: Any) -> Path:
    return atomic_write(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")


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
    return f"{value:.4g}" if isinstance(value, float) else str(value).replace("|", "\\|")


def write_summary(out: Path, command: str, markdown: str) -> Path:
    """Write ``command``'s section of ``out/summary.md``, keeping other commands' sections.

    Commands that share an output folder (``score``, ``mislabel-detect``, ``target-identify``,
    as in the demo) each own one section, delimited by HTML comments, so none overwrites another.
    """
    begin, end = f"<!-- influence-cli:{command} -->", f"<!-- /influence-cli:{command} -->"
    path = out / "summary.md"
    section = f"{begin}\n{markdown.rstrip()}\n{end}\n"
    text = path.read_text() if path.is_file() else ""
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        text = head + section.rstrip("\n") + tail
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + section
    return atomic_write(path, text)
