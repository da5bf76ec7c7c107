"""The CLI's progress when stderr is not a terminal (CI, ``nohup``): a line with done/total, rate and ETA
every ``$INFLUENCE_CLI_PROGRESS_SECONDS`` while a pass runs, and one when it ends (fake clock)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from influence_cli.cli import app
from influence_cli.cli.common import progress_for
from influence_cli.progress import INTERVAL_ENV


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    """``time.monotonic`` returning ``now[0]``."""
    now = [500.0]
    monkeypatch.setattr("influence_cli.progress.time.monotonic", lambda: now[0])
    return now


def _run_pass(clock: list[float], quiet: bool = False) -> None:
    """A 60 s pass of 120 examples in batches of 6 every 3 s."""
    with progress_for(quiet).task("train gradients", total=120) as advance:
        for _ in range(20):
            clock[0] += 3
            advance(6)


def test_lines_at_the_interval_with_rate_and_eta_then_a_final_line(clock, capsys, monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "20")
    _run_pass(clock)
    lines = capsys.readouterr().err.splitlines()
    # a line at the first advance 20 s after the start (21 s) and after the last line (42 s), then the end
    assert lines == ["train gradients: 42/120 (35%), 2/s, ETA 0:00:39",
                     "train gradients: 84/120 (70%), 2/s, ETA 0:00:18",
                     "train gradients: 120 done in 60.0 s (2/s)"]


def test_the_default_interval_is_15_seconds(clock, capsys, monkeypatch):
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    _run_pass(clock)
    assert len(capsys.readouterr().err.splitlines()) == 60 // 15 + 1


def test_quiet_prints_nothing(clock, capsys):
    _run_pass(clock, quiet=True)
    assert capsys.readouterr().err == ""


def test_a_bad_interval_is_a_one_line_usage_error(tiny_recipe, monkeypatch, tmp_path):
    run = tiny_recipe("mlp", n_train=4, n_test=2)
    monkeypatch.setenv(INTERVAL_ENV, "often")
    res = CliRunner().invoke(app, ["mislabel-detect", str(run.recipe_path), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and INTERVAL_ENV in res.output
    assert len(res.output.strip().splitlines()) == 1
