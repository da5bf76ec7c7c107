"""Progress: every ``progress=`` form (None, a Progress, a callback), the notebook bars, the timed log
lines (with a fake clock) and what ``import influence_cli`` loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from influence_cli import check, load_recipe, mislabel_detect, score, target_identify
from influence_cli.errors import InfluenceError, ParameterError
from influence_cli.progress import (
    INTERVAL_ENV,
    CallbackProgress,
    LogProgress,
    NoProgress,
    NotebookProgress,
    TimedProgress,
    as_progress,
    log_interval,
)

ROOT = Path(__file__).resolve().parents[1]


class FakeClock:
    """``time.monotonic`` that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr("influence_cli.progress.time.monotonic", fake)
    return fake


def test_as_progress_takes_none_a_progress_or_a_callable():
    assert isinstance(as_progress(None), NoProgress)
    timed = TimedProgress()
    assert as_progress(timed) is timed
    assert isinstance(as_progress(lambda task, done, total: None), CallbackProgress)
    with pytest.raises(ParameterError) as err:
        as_progress(42)  # type: ignore[arg-type]
    assert err.value.parameter == "progress"


def test_the_callback_sees_the_start_and_every_advance():
    calls = []
    with as_progress(lambda *a: calls.append(a)).task("pass", total=5) as advance:
        advance(2)
        advance(3)
    assert calls == [("pass", 0, 5), ("pass", 2, 5), ("pass", 5, 5)]


@pytest.mark.parametrize("call", [score, mislabel_detect, target_identify, check])
def test_every_entry_point_takes_a_callback(tiny_recipe, call):
    run = tiny_recipe("mlp", n_train=6, n_test=4, checks={"max_flagged_mislabel_fraction": 1.0})
    calls: list[tuple[str, int, int]] = []
    kwargs = {"baseline": None} if call is check else {}
    call(load_recipe(run.recipe_path), progress=lambda *a: calls.append(a), **kwargs)
    tasks = {task for task, _, _ in calls}
    assert tasks and all((task, total, total) in calls for task, _, total in calls)  # every task ends done
    # over the 6 training examples: gradients once, or forward passes at each of the 2 checkpoints
    assert ("train gradients", 6, 6) in calls or ("forward passes", 12, 12) in calls


def test_log_lines_every_interval_with_rate_and_eta_then_a_final_line(clock):
    lines: list[str] = []
    with LogProgress(lines.append, interval=10).task("train gradients", total=100) as advance:
        for _ in range(10):  # 10 examples every 4 s: 2.5 examples/s
            clock.now += 4
            advance(10)
    assert lines[:-1] == ["train gradients: 30/100 (30%), 2.5/s, ETA 0:00:28",
                          "train gradients: 60/100 (60%), 2.5/s, ETA 0:00:16",
                          "train gradients: 90/100 (90%), 2.5/s, ETA 0:00:04"]
    assert lines[-1] == "train gradients: 100 done in 40.0 s (2.5/s)"


def test_log_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert log_interval() == 15
    monkeypatch.setenv(INTERVAL_ENV, "30")
    assert log_interval() == 30 and LogProgress(print).interval == 30
    for bad in ("0", "-1", "soon", "nan"):
        monkeypatch.setenv(INTERVAL_ENV, bad)
        with pytest.raises(InfluenceError, match=INTERVAL_ENV):
            log_interval()


@pytest.mark.parametrize("tqdm", [True, False], ids=["tqdm", "rich"])
def test_notebook_progress_counts_with_or_without_tqdm(monkeypatch, capsys, tqdm):
    if not tqdm:
        monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # `from tqdm.auto import ...` raises ImportError
    with NotebookProgress().task("test gradients", total=4) as advance:
        advance(1)
        advance(3)
    shown = capsys.readouterr()
    assert "test gradients" in (shown.err if tqdm else shown.out)  # tqdm writes to stderr, rich to stdout


def test_importing_the_package_loads_no_heavy_or_optional_module():
    """``import influence_cli`` loads none of torch, matplotlib, tqdm, pandas or the CLI; resolving every
    public name (torch, transformers) still loads neither matplotlib, pandas nor the CLI."""
    code = ("import sys, influence_cli\n"
            "heavy = ('torch', 'matplotlib', 'tqdm', 'pandas', 'typer', 'influence_cli.cli')\n"
            "print(sorted(m for m in heavy if m in sys.modules))\n"
            "[getattr(influence_cli, name) for name in influence_cli.__all__]\n"
            "print(sorted(m for m in ('matplotlib', 'pandas', 'typer', 'influence_cli.cli') if m in sys.modules))\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:2] == ["[]", "[]"]
