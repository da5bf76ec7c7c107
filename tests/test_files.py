"""Report files: atomic writes and the per-command sections of summary.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from influence_cli.errors import InfluenceError
from influence_cli.reports.files import atomic_write, markdown_table, write_json, write_summary


def test_atomic_write_leaves_no_part_file(tmp_path: Path) -> None:
    path = atomic_write(tmp_path / "sub" / "a.txt", "hello")
    assert path.read_text() == "hello"
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]


def test_write_json_refuses_nan_and_keeps_the_old_file(tmp_path: Path) -> None:
    write_json(tmp_path / "r.json", {"x": 1})
    with pytest.raises(ValueError):
        write_json(tmp_path / "r.json", {"x": float("nan")})
    assert (tmp_path / "r.json").read_text() == '{\n "x": 1\n}\n'


def test_summary_sections_are_kept_per_command(tmp_path: Path) -> None:
    write_summary(tmp_path, "score", "# Influence\nfirst")
    write_summary(tmp_path, "mislabel-detect", "# Mislabels\nsecond")
    write_summary(tmp_path, "score", "# Influence\nthird")
    lines = (tmp_path / "summary.md").read_text().splitlines()
    assert "first" not in lines and "second" in lines and "third" in lines
    assert lines.index("# Influence") < lines.index("# Mislabels")
    assert lines.count("<!-- influence-cli:score -->") == 1


def test_markdown_table_escapes_pipes_and_rounds() -> None:
    assert markdown_table(["a", "b"], [("x|y", 0.123456)]) == "| a | b |\n|---|---|\n| x\\|y | 0.1235 |\n"


def test_an_unwritable_folder_is_an_input_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(InfluenceError, match=r"/file/r.json: cannot write the report: File exists$"):
        write_json(blocker / "r.json", {"x": 1})
