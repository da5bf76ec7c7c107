"""Bad checkpoints and pickled data files through the CLI: one ``error:`` line, exit 2, nothing
written, nothing run (non-finite weights, pickles that would run code, a folder as a checkpoint)."""

from __future__ import annotations

import os

import pytest
import torch
from typer.testing import CliRunner

from conftest import TinyRun
from influence_cli.cli import app

runner = CliRunner()
COMMANDS = {
    "score": ["score"],
    "target-identify": ["target-identify", "--test-indices", "0"],
    "mislabel-loss": ["mislabel-detect", "--method", "loss"],
    "mislabel-aum": ["mislabel-detect", "--method", "aum"],
}


def _run(run: TinyRun, command: list[str]):
    return runner.invoke(app, [command[0], str(run.recipe_path), *command[1:], "-q", "--out", str(run.dir / "report")])


def _assert_refused(res, run: TinyRun, message: str) -> None:
    assert (res.exit_code, res.stdout, res.stderr) == (2, "", f"error: {message}\n")
    assert not (run.dir / "report").exists()


class _RunsACommand:
    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_nan_weight_is_an_error_naming_the_checkpoint_and_the_tensor(tiny_recipe, command) -> None:
    run = tiny_recipe("mlp", n_train=5, n_test=2)
    state = dict(run.states[1])
    state["2.weight"] = state["2.weight"].clone()
    state["2.weight"][1, :3] = float("nan")
    torch.save(state, run.ckpt_paths[1])
    _assert_refused(_run(run, COMMANDS[command]), run,
                    f"checkpoints[1] ({run.ckpt_paths[1]}): 2.weight has 3 non-finite values (NaN or inf)")


def test_an_inf_in_batchnorm_running_statistics_is_an_error(tiny_recipe) -> None:
    run = tiny_recipe("cnn", n_train=5, n_test=2)
    state = dict(run.states[0], **{"bn.running_var": torch.full((4,), float("inf"))})
    torch.save(state, run.ckpt_paths[0])
    _assert_refused(_run(run, COMMANDS["mislabel-aum"]), run,
                    f"checkpoints[0] ({run.ckpt_paths[0]}): bn.running_var has 4 non-finite values (NaN or inf)")


def test_a_checkpoint_whose_pickle_calls_os_system_is_refused_and_nothing_runs(tiny_recipe) -> None:
    run = tiny_recipe("mlp", n_train=5, n_test=2)
    marker = run.dir / "it-ran"
    torch.save({**run.states[0], "hook": _RunsACommand(marker)}, run.ckpt_paths[0])
    _assert_refused(_run(run, COMMANDS["score"]), run,
                    f"checkpoints[0] ({run.ckpt_paths[0]}): the file needs pickle to load, which can run code; "
                    "set `trust_checkpoints: true` in the recipe if you trust it")
    assert not marker.exists()


def test_a_data_file_that_needs_pickle_is_refused_without_pytorchs_advice(tiny_recipe) -> None:
    run = tiny_recipe("mlp", n_train=5, n_test=2)
    marker = run.dir / "it-ran"
    data = torch.load(run.dir / "train.pt")
    torch.save({**data, "hook": _RunsACommand(marker)}, run.dir / "train.pt")
    res = _run(run, COMMANDS["score"])
    _assert_refused(res, run, f"data.train.path: cannot read {run.dir / 'train.pt'}: the file needs pickle to load, "
                              "which can run code; save only tensors (a dict of tensors) or a .safetensors file")
    assert "weights_only" not in res.stderr and not marker.exists()


def test_a_trainer_checkpoint_folder_given_as_a_checkpoint_suggests_hf_trainer_dir(tiny_recipe) -> None:
    run = tiny_recipe("mlp", n_train=5, n_test=2)
    folder = run.dir / "out" / "checkpoint-8"
    folder.mkdir(parents=True)
    run.data["checkpoints"][1]["path"] = "out/checkpoint-8"
    run.rewrite()
    _assert_refused(_run(run, COMMANDS["score"]), run,
                    f"checkpoints[1] ({folder}): is a folder, not a checkpoint file; it looks like a transformers "
                    f"Trainer checkpoint: set `checkpoints: {{hf_trainer_dir: {run.dir / 'out'}}}` to use every "
                    "checkpoint-<step>/ of that run")
