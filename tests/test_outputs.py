"""Outputs are checked before anything is computed: no input, and nothing that is not ours, is ever overwritten."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Any, Callable

import pytest
from typer.testing import CliRunner

from conftest import TINY_MODELS, TinyRun
from influence_cli.audits.baseline import Baseline
from influence_cli.cli import app
from influence_cli.errors import InfluenceError
from influence_cli.outputs import Target, guard_outputs
from influence_cli.recipe import load_recipe
from influence_cli.reports.files import write_summary
from influence_cli.reports.run_info import read_run_info, write_run_info

runner = CliRunner()
OUR_JUNIT = '<?xml version="1.0"?>\n<testsuites name="influence-cli check" tests="0" failures="0" />\n'
# The computation each command starts with, patched to fail: a refusal must come before it.
COMPUTATIONS = {"check": ("influence_cli.audits.check", "influence_cli.cli.check", "session_for"),
                "score": ("influence_cli.scoring", "influence_cli.cli.score", "score"),
                "mislabel-detect": ("influence_cli.audits.mislabel", "influence_cli.cli.mislabel", "mislabel_detect"),
                "target-identify": ("influence_cli.audits.target", "influence_cli.cli.target", "target_identify")}


@pytest.fixture
def run(tiny_recipe: Callable[..., TinyRun], monkeypatch: pytest.MonkeyPatch) -> TinyRun:
    """A tiny recipe with a `checks:` section and a gradient store, run from its own folder."""
    for source, cli, name in COMPUTATIONS.values():
        for module in (source, cli):
            monkeypatch.setattr(f"{module}.{name}", _computed, raising=False)
    run = tiny_recipe("mlp", n_train=6, n_test=3, checks={"max_new_flagged": 0}, cache_dir="cache")
    (run.dir / "cache" / "key").mkdir(parents=True)
    Baseline({}).save(run.dir / "accepted.json")
    (run.dir / "notes.xml").write_text("<notes>mine</notes>\n")
    (run.dir / "notes.json").write_text('{"mine": true}\n')
    (run.dir / "a-file").write_text("not a folder\n")
    (run.dir / "a-folder").mkdir()
    monkeypatch.chdir(run.dir)
    return run


def _computed(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("computed before checking the outputs")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused(run: TinyRun, args: list[str], message: str) -> None:
    """The command exits 2 with exactly ``message`` on one line, and no file changed or appeared."""
    before = _snapshot(run.dir)
    result = runner.invoke(app, [*args[:1], str(run.recipe_path.name), *args[1:]])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"error: {message}" and "Traceback" not in result.output
    assert _snapshot(run.dir) == before and not (run.dir / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["check", "--update-baseline", "--baseline", "train.pt"],
     "--baseline train.pt: refusing to overwrite the training data"),
    (["check", "--junit", "recipe.yaml"], "--junit recipe.yaml: refusing to overwrite the recipe"),
    (["check", "--junit", "test.pt"], "--junit test.pt: refusing to overwrite the test data"),
    (["check", "--junit", "epoch2.pt"], "--junit epoch2.pt: refusing to overwrite a checkpoint"),
    (["check", "--junit", str(TINY_MODELS)], f"--junit {TINY_MODELS}: refusing to overwrite the model code"),
    (["check", "--baseline", "accepted.json", "--junit", "accepted.json"],
     "--junit accepted.json: refusing to overwrite the baseline"),
    (["check", "--out", "recipe.yaml"], "--out recipe.yaml: refusing to overwrite the recipe"),
    (["check", "--junit", "cache/key/junit.xml"], "--junit cache/key/junit.xml: refusing to write inside the "
                                                  "gradient store (cache_dir) ({dir}/cache)"),
    (["check", "--out", "cache"], "--out cache: refusing to write inside the gradient store (cache_dir) ({dir}/cache)"),
    (["check", "--junit", "notes.xml"], "--junit notes.xml: refusing to overwrite a file that is not JUnit XML "
                                        "written by influence-cli check"),
    (["check", "--update-baseline", "--baseline", "notes.json"],
     "--baseline notes.json: refusing to overwrite a file that is not an influence-cli baseline"),
    (["check", "--junit", "a-folder"], "--junit a-folder: is a folder; give a file path"),
    (["check", "--junit", "a-file/junit.xml"], "--junit a-file/junit.xml: cannot write there: a-file is a file, "
                                               "not a folder"),
    (["check", "--out", "a-file"], "--out a-file: is a file, not a folder"),
    (["check", "--out", "a-file/reports"], "--out a-file/reports: cannot write there: a-file is a file, not a folder"),
    (["check", "--out", "o", "--junit", "o/check.json"], "--junit o/check.json: --out writes o/check.json too; "
                                                         "give another path"),
    (["check", "--update-baseline", "--baseline", "b.json", "--junit", "b.json"],
     "--baseline b.json: --junit writes b.json too; give another path"),
    (["score", "--out", "train.pt"], "--out train.pt: refusing to overwrite the training data"),
    (["mislabel-detect", "--out", "epoch1.pt"], "--out epoch1.pt: refusing to overwrite a checkpoint"),
    (["target-identify", "--out", "a-file"], "--out a-file: is a file, not a folder"),
    (["score", "--out", "cache/key"], "--out cache/key: refusing to write inside the gradient store (cache_dir) "
                                      "({dir}/cache)"),
])
def test_outputs_that_would_overwrite_what_the_user_gave_are_refused(run: TinyRun, args: list[str],
                                                                     message: str) -> None:
    _refused(run, args, message.format(dir=run.dir.resolve()))


def test_links_to_inputs_are_followed(run: TinyRun) -> None:
    os.symlink(run.recipe_path, run.dir / "link.xml")
    os.link(run.dir / "train.pt", run.dir / "hard.json")
    _refused(run, ["check", "--junit", "link.xml"], "--junit link.xml: refusing to overwrite the recipe")
    _refused(run, ["check", "--update-baseline", "--baseline", "hard.json"],
             "--baseline hard.json: refusing to overwrite the training data")


@pytest.mark.parametrize("changes, args, message", [
    ({"output": "train.pt"}, ["score"], "output {dir}/train.pt: refusing to overwrite the training data"),
    ({"checks": {"max_new_flagged": 0, "baseline": "recipe.yaml"}}, ["check", "--update-baseline"],
     "checks.baseline {dir}/recipe.yaml: refusing to overwrite the recipe"),
    ({"checkpoints": {"glob": "epoch*.pt"}}, ["check", "--junit", "epoch1.pt"],
     "--junit epoch1.pt: refusing to overwrite a checkpoint"),
    ({"loss": "losses.py:loss"}, ["check", "--junit", "losses.py"], "--junit losses.py: refusing to overwrite the "
                                                                    "loss code"),
    ({"data": {"train": {"format": "imagefolder", "root": "images"}}}, ["mislabel-detect", "--out", "images/audit"],
     "--out images/audit: refusing to write inside the training images ({dir}/images)"),
])
def test_recipe_keys_name_protected_inputs(run: TinyRun, changes: dict[str, Any], args: list[str],
                                           message: str) -> None:
    (run.dir / "losses.py").write_text("def loss(outputs, labels):\n    raise AssertionError\n")
    (run.dir / "images").mkdir()
    run.rewrite(**changes)
    _refused(run, args, message.format(dir=run.dir.resolve()))


def test_our_own_artefacts_pass_and_probing_leaves_nothing_behind(run: TinyRun) -> None:
    """An existing baseline, our JUnit XML and a folder of our reports pass; a missing folder is probed in the
    existing folder above it and not created, so that a run failing later leaves no trace."""
    (run.dir / "junit.xml").write_text(OUR_JUNIT)
    (run.dir / "out").mkdir()
    write_summary(run.dir / "out", "score", "# Influence")
    recipe = load_recipe(run.recipe_path)
    guard_outputs(recipe, [Target("--out", Path("out")), Target("--junit", Path("junit.xml"), "junit"),
                           Target("--baseline", Path("accepted.json"), "baseline"),
                           Target("--junit", Path("new/deeper/j.xml"), "junit")])
    assert not (run.dir / "new").exists() and not list(run.dir.glob(".influence-cli-probe-*"))
    assert sorted(p.name for p in (run.dir / "out").iterdir()) == ["summary.md"]  # no probe file left


def test_the_recipes_own_baseline_may_be_updated(run: TinyRun) -> None:
    recipe = load_recipe(run.rewrite(checks={"max_new_flagged": 0, "baseline": "accepted.json"}))
    guard_outputs(recipe, [Target("checks.baseline", run.dir / "accepted.json", "baseline")])
    with pytest.raises(InfluenceError, match="--junit accepted.json: refusing to overwrite the baseline$"):
        guard_outputs(recipe, [Target("--junit", Path("accepted.json"), "junit")])


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_an_unwritable_out_folder_fails_before_computing(run: TinyRun) -> None:
    (run.dir / "ro").mkdir(mode=0o500)
    try:
        _refused(run, ["score", "--out", "ro"], "--out ro: cannot write there: Permission denied")
    finally:
        (run.dir / "ro").chmod(0o700)


def test_a_failed_probe_write_is_one_line_naming_the_option(run: TinyRun, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(**kwargs: Any) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("influence_cli.outputs.tempfile.mkstemp", denied)
    _refused(run, ["check", "--out", "a-folder"], "--out a-folder: cannot write there: Permission denied")


def test_demo_refuses_a_file_as_its_folder(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("mine\n")
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "a-file")])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: --out {tmp_path / 'a-file'}: is a file, not a folder"
    assert (tmp_path / "a-file").read_text() == "mine\n"


def _record(args: tuple[Path, Path, int]) -> None:
    recipe, out, i = args
    write_run_info(out, f"command-{i}", load_recipe(recipe), seconds=float(i))


def test_parallel_commands_keep_every_run_json_entry(run: TinyRun) -> None:
    """20 processes recording their command in one run.json at once: no entry is lost."""
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with context.Pool(8) as pool:
        pool.map(_record, [(run.recipe_path, run.dir / "out", i) for i in range(20)])
    info = read_run_info(run.dir / "out")
    assert info is not None and sorted(info["commands"]) == sorted(f"command-{i}" for i in range(20))
    assert [p.name for p in (run.dir / "out").iterdir()] == ["run.json"]
