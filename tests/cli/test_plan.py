"""``influence-cli plan`` end to end on a tiny recipe (CliRunner): the tables, the JSON, the suggestions
over a budget, option errors, and ``--help`` without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from influence_cli.cli import app
from influence_cli.cli.plan import Command
from influence_cli.plan import COMMANDS

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def run(tiny_recipe):
    return tiny_recipe("cnn", n_train=8, n_test=4)


def _invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def test_plan_prints_the_layers_memory_and_time(run):
    res = _invoke("plan", run.recipe_path)
    assert res.exit_code == 0, res.output
    for text in ("conv", "materialised", "bn", "norm hooks", "fc", "factorised", "Memory", "C·M·d", "Time",
                 "train gradients", "test gradients", "total"):
        assert text in res.output, text
    assert "Suggested" not in res.output


def test_json_parses_and_matches_the_layout(run):
    res = _invoke("plan", run.recipe_path, "--format", "json", "--test-indices", "0:2")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    part = data["parts"][0]
    assert [x["name"] for x in part["layers"]] == ["conv", "bn", "fc"]
    assert part["queries"] == 2 and part["train"] == 8 and data["checkpoints"] == 2
    assert data["memory_bytes"] == data["weights_bytes"] + part["query_bytes"] + part["batch_bytes"]
    assert data["seconds"] > 0 and data["suggestions"] == []


def test_over_budget_prints_yaml_settings(run):
    res = _invoke("plan", run.recipe_path, "--command", "mislabel-detect", "--method", "tracin",
                  "--budget-minutes", "1e-9")
    assert res.exit_code == 0, res.output
    assert "over in time" in res.output and "layers:\n- fc\n" in res.output


@pytest.mark.parametrize("args, flag", [
    (("--command", "mislabel-detect", "--test-indices", "0"), "--test-indices"),
    (("--method", "combined"), "--method"),
    (("--budget-gb", "0"), "--budget-gb"),
    (("--command", "check"), "checks"),
])
def test_option_errors_exit_2_naming_the_option(run, args, flag):
    res = _invoke("plan", run.recipe_path, *args)
    assert res.exit_code == 2, res.output
    assert flag in res.output


def test_the_cli_lists_the_library_commands():
    assert tuple(str(c) for c in Command) == COMMANDS


def test_help_does_not_import_torch():
    code = ("import sys; from influence_cli.cli import app; from typer.testing import CliRunner; "
            "r = CliRunner().invoke(app, ['plan', '--help']); assert r.exit_code == 0, r.output; "
            "print('torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"
