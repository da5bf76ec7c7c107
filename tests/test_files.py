"""Report files: atomic writes and the per-command sections of summary.md."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from influence_cli.errors import InfluenceError
from influence_cli.files import atomic_write, write_json
from influence_cli.reports.files import markdown_table, write_summary


def test_atomic_write_leaves_no_part_file(tmp_path: Path) -> None:
    path = atomic_write(tmp_path / "sub" / "a.txt", "hello")
    assert path.read_text() == "hello"
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]


@pytest.mark.parametrize("obj, where", [
    ({"x": float("nan")}, "x is nan"),
    ({"ranking": [{"score": 1.0}, {"score": float("-inf")}]}, "ranking[1].score is -inf"),
    (float("inf"), "the value is inf"),
])
def test_write_json_refuses_non_finite_numbers_naming_the_key_and_keeps_the_old_file(
        tmp_path: Path, obj: object, where: str) -> None:
    write_json(tmp_path / "r.json", {"x": 1})
    with pytest.raises(InfluenceError) as info:
        write_json(tmp_path / "r.json", obj)
    assert info.value.message == f"{tmp_path / 'r.json'}: cannot write the report: {where}, not a finite number"
    assert (tmp_path / "r.json").read_text() == '{\n "x": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


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


def test_parallel_atomic_writes_into_one_file_never_fail(tmp_path: Path) -> None:
    """60 threads writing one report at once (a fixed ``.part`` name made 9-13 of them fail)."""
    path = tmp_path / "report.json"
    with ThreadPoolExecutor(max_workers=12) as pool:
        list(pool.map(lambda i: atomic_write(path, f"writer {i}\n" * 1000), range(60)))
    assert path.read_text().startswith("writer ") and [p.name for p in tmp_path.iterdir()] == ["report.json"]


def _section(args: tuple[Path, int]) -> None:
    out, i = args
    write_summary(out, f"command-{i}", f"# Section {i}")


def test_parallel_summary_sections_are_all_kept(tmp_path: Path) -> None:
    """40 processes adding their own section to one summary.md at once: none is lost, no lock file stays."""
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with context.Pool(8) as pool:
        pool.map(_section, [(tmp_path, i) for i in range(40)])
    text = (tmp_path / "summary.md").read_text()
    assert all(f"<!-- influence-cli:command-{i} -->\n# Section {i}\n" in text for i in range(40))
    assert [p.name for p in tmp_path.iterdir()] == ["summary.md"]


def test_a_failed_write_removes_its_temporary_file(tmp_path: Path) -> None:
    (tmp_path / "report.json").mkdir()  # os.replace cannot put a file over a folder
    with pytest.raises(InfluenceError, match="report.json: cannot write the report: "):
        atomic_write(tmp_path / "report.json", "x")
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
