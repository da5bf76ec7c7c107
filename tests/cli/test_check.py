"""``influence-cli check`` end to end on a tiny MLP trained on separable blobs, with planted label noise."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import TINY_MODELS
from fixtures.tiny_models import build_mlp
from influence_cli.cli import app
from influence_cli.errors import DataError

N, FLIPS, SEP = 240, 36, 6.0      # 15% of the labels flipped in the noisy run
RULES = {"max_flagged_mislabel_fraction": 0.02, "max_flagged_mislabel_per_class": 2}
runner = CliRunner()


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three well-separated Gaussian blobs in 6-D (the tiny MLP's input), balanced classes."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    return SEP * torch.eye(3, 6)[y] + torch.randn(n, 6, generator=gen), y


def _train(x: torch.Tensor, y: torch.Tensor, folder: Path, lr: float = 0.1) -> list[dict[str, Any]]:
    """Plain SGD on the tiny MLP (by hand: torch.optim's first step imports torch._dynamo, ~5 s);
    a checkpoint (with its learning rate) every 5 epochs, 3 in all."""
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    model = build_mlp()
    entries = []
    for epoch in range(1, 16):
        for start in range(0, len(x), 20):
            loss = torch.nn.functional.cross_entropy(model(x[start:start + 20]), y[start:start + 20])
            grads = torch.autograd.grad(loss, list(model.parameters()))
            with torch.no_grad():
                for param, grad in zip(model.parameters(), grads):
                    param -= lr * grad
        if epoch % 5 == 0:
            path = folder / f"epoch{epoch}.pt"
            torch.save({"state_dict": model.state_dict(), "learning_rate": lr}, path)
            entries.append({"path": str(path)})
    return entries


def _recipe(folder: Path, x: torch.Tensor, y: torch.Tensor, checkpoints: list[dict[str, Any]],
            checks: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"inputs": x, "labels": y}, folder / "train.pt")
    data = {"model": {"factory": f"{TINY_MODELS}:build_mlp"}, "checkpoints": checkpoints,
            "data": {"train": {"format": "tensors", "path": "train.pt"}}, "batch_size": 64, "device": "cpu",
            "dtype": "float64", "output": "out", "checks": checks}
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Checkpoints of one clean and one noisy training run on the same inputs."""
    root = tmp_path_factory.mktemp("check")
    x, y = _blobs(N, seed=0)
    flips = torch.randperm(N, generator=torch.Generator().manual_seed(1))[:FLIPS]
    noisy = y.clone()
    noisy[flips] = (noisy[flips] + 1) % 3
    return {"root": root, "x": x, "clean": y, "noisy": noisy, "flips": set(flips.tolist()),
            "clean_ckpts": _train(x, y, root / "clean_ckpts"), "noisy_ckpts": _train(x, noisy, root / "noisy_ckpts")}


def _check(recipe: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    result = runner.invoke(app, ["check", str(recipe), "--format", "json", *args], env=env)
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def _failed(report: dict[str, Any]) -> list[str]:
    return [r["rule"] for r in report["rules"] if not r["passed"]]


def test_clean_data_passes(runs: dict[str, Any], tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, runs["x"], runs["clean"], runs["clean_ckpts"], RULES)
    result = runner.invoke(app, ["check", str(recipe), "--quiet"])
    assert result.exit_code == 0, result.output
    code, report = _check(recipe)
    assert code == 0 and report["passed"] and _failed(report) == []
    assert report["flagged"] <= 0.02 * N and (tmp_path / "out" / "check.json").is_file()


def test_planted_noise_fails_then_baseline_accepts_it(runs: dict[str, Any], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    x, noisy, ckpts = runs["x"], runs["noisy"], runs["noisy_ckpts"]
    recipe = _recipe(tmp_path / "v1", x, noisy, ckpts, {**RULES, "max_new_flagged": 0})
    summary, junit = tmp_path / "step_summary.md", tmp_path / "junit.xml"
    code, report = _check(recipe, "--junit", str(junit), env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert code == 1 and set(_failed(report)) == {"max_flagged_mislabel_fraction", "max_flagged_mislabel_per_class",
                                                  "max_new_flagged"}
    flagged = {e["train_index"] for e in report["new_flagged"]}
    assert len(flagged) == report["flagged"] > 0.10 * N
    assert len(flagged & runs["flips"]) >= 0.9 * len(flagged)  # the planted flips, not clean examples
    cases = ET.parse(junit).getroot().findall("./testsuite/testcase")
    assert [c.get("name") for c in cases] == list(RULES) + ["max_new_flagged"]
    assert all(c.find("failure") is not None for c in cases)
    assert "## influence-cli check: ❌" in summary.read_text()

    # Accept today's flags; the same data then passes.
    baseline = tmp_path / "baseline.json"
    code, report = _check(recipe, "--baseline", str(baseline), "--update-baseline")
    assert code == 0 and report["baseline"]["accepted"] == len(flagged)
    entries = json.loads(baseline.read_text())["entries"]
    assert len(entries) == len(flagged) and [e["id"] for e in entries] == sorted(e["id"] for e in entries)
    assert _check(recipe, "--baseline", str(baseline))[0] == 0

    # Reordered data keeps every id, so it still passes against the baseline.
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(2))
    moved = _recipe(tmp_path / "v2", x[perm], noisy[perm], ckpts, {**RULES, "max_new_flagged": 0,
                                                                   "baseline": str(baseline)})
    code, report = _check(moved)
    assert code == 0 and report["baseline"]["accepted"] == len(flagged) and report["baseline"]["disappeared"] == []

    # Appended mislabelled examples fail again, and only they are named.
    extra_x, extra_y = _blobs(6, seed=3)
    grown = _recipe(tmp_path / "v3", torch.cat([x, extra_x]), torch.cat([noisy, (extra_y + 1) % 3]), ckpts,
                    {"max_new_flagged": 0, "baseline": str(baseline)})
    monkeypatch.chdir(tmp_path)
    code, report = _check(grown, "--out", "v3_out")
    assert code == 1 and _failed(report) == ["max_new_flagged"]
    new = {e["train_index"] for e in report["new_flagged"]}
    assert new and new <= set(range(N, N + 6)) and len(new) >= 4
    assert (tmp_path / "v3_out" / "check.md").is_file()


def test_planted_backdoor_fails_no_attack_target(runs: dict[str, Any], tmp_path: Path) -> None:
    """20 poison examples: class-0 inputs with a trigger (feature 5 = 8) labelled 1; the target is
    test example 0, a triggered class-0 input. Only the watched test examples 0-2 are judged."""
    x, y = runs["x"], runs["clean"]
    trigger = torch.tensor([0, 0, 0, 0, 0, 8.0])
    gen = torch.Generator().manual_seed(9)
    poison = SEP * torch.eye(3, 6)[0] + trigger + torch.randn(20, 6, generator=gen)
    test_x, test_y = _blobs(30, seed=5)
    test_x[0], test_y[0] = SEP * torch.eye(3, 6)[0] + trigger, 0
    checks = {"no_attack_target": {"test_indices": [0, 1, 2]}}

    def recipe(folder: Path, train_x: torch.Tensor, train_y: torch.Tensor, ckpts: list[dict[str, Any]]) -> Path:
        path = _recipe(folder, train_x, train_y, ckpts, checks)
        torch.save({"inputs": test_x, "labels": test_y}, folder / "test.pt")
        data = yaml.safe_load(path.read_text())
        data["data"]["test"] = {"format": "tensors", "path": "test.pt"}
        path.write_text(yaml.safe_dump(data))
        return path

    code, report = _check(recipe(tmp_path / "clean", x, y, runs["clean_ckpts"]))
    assert code == 0 and report["rules"][0]["detail"] == "none of 3 watched test example(s) flagged (gas-l)"
    px, py = torch.cat([x, poison]), torch.cat([y, torch.ones(20, dtype=torch.long)])
    code, report = _check(recipe(tmp_path / "attacked", px, py, _train(px, py, tmp_path / "attacked_ckpts")))
    assert code == 1 and _failed(report) == ["no_attack_target"]
    (target,) = report["rules"][0]["offenders"]
    assert target["test_index"] == 0 and target["prediction"] == 1
    assert {s["train_index"] for s in target["suspects"]} <= set(range(N, N + 20)) and len(target["suspects"]) >= 8


@pytest.mark.parametrize("recipe_checks, args, words", [
    (RULES, ["--update-baseline"], "--update-baseline: needs a baseline file: give --baseline or set checks.baseline"),
    (RULES, ["--baseline", "missing.json"], "missing.json: baseline file not found"),
    (None, [], "checks: the recipe has no `checks:` section"),
    ({"max_flagged_mislabel_fractoin": 0.1}, [], "checks: unknown rule 'max_flagged_mislabel_fractoin'"),
    ({"max_new_flagged": 0, "mislabel_method": "los"}, [], "checks.mislabel_method: expected one of 'tracin', 'tracin-last', 'aum', 'loss', 'combined', 'ekfac', "
                                                      "'arnoldi', got 'los'"),
    ({"no_attack_target": {"test_indices": [0]}}, [], "data.test: this command needs a test split"),
])
def test_usage_errors_exit_2_with_one_line(runs: dict[str, Any], tmp_path: Path, recipe_checks: Any,
                                           args: list[str], words: str) -> None:
    recipe = _recipe(tmp_path, runs["x"], runs["clean"], runs["clean_ckpts"], recipe_checks)
    if recipe_checks is None:
        data = yaml.safe_load(recipe.read_text())
        del data["checks"]
        recipe.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["check", str(recipe), *args])
    assert result.exit_code == 2
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_first_run_works_before_the_recipes_baseline_exists(runs: dict[str, Any], tmp_path: Path) -> None:
    """The CI set-up of the docs: the recipe names `checks.baseline` before any run has written it. The
    missing file is an empty baseline, said once; `--update-baseline` then creates it. A missing file
    named with `--baseline FILE` stays an error (test_usage_errors_exit_2_with_one_line)."""
    recipe = _recipe(tmp_path, runs["x"], runs["noisy"], runs["noisy_ckpts"],
                     {"max_new_flagged": 0, "baseline": "checks-baseline.json"})
    baseline = tmp_path / "checks-baseline.json"
    first = runner.invoke(app, ["check", str(recipe), "--format", "json"])
    assert first.exit_code == 1, first.output  # the planted flips are new: a finding, not a broken recipe
    warning = (f"warning: checks.baseline {baseline} does not exist yet: no example is accepted; create it with "
               "--update-baseline")
    assert first.stderr.replace("\n", " ").count(warning) == 1, first.stderr
    report = json.loads(first.stdout)
    assert report["baseline"] == {"entries": 0, "accepted": 0, "disappeared": []} and not baseline.exists()
    assert _check(recipe, "--update-baseline")[0] == 0 and baseline.is_file()
    again = runner.invoke(app, ["check", str(recipe), "--quiet"])
    assert again.exit_code == 0 and "does not exist" not in again.stderr


def test_the_library_and_the_cli_give_the_same_verdict(runs: dict[str, Any], tmp_path: Path) -> None:
    """``influence_cli.check(load_recipe(r))`` honours and updates the recipe's ``checks.baseline``
    exactly as ``influence-cli check r`` does."""
    from influence_cli import check, load_recipe

    recipe = _recipe(tmp_path, runs["x"], runs["noisy"], runs["noisy_ckpts"],
                     {**RULES, "max_new_flagged": 0, "baseline": "accepted.json"})
    code, cli = _check(recipe, "--update-baseline")  # writes checks.baseline
    accepted = (tmp_path / "accepted.json").read_bytes()
    lib = check(load_recipe(recipe)).to_dict()
    assert code == 0 and lib["passed"] and lib["baseline"] == cli["baseline"] and lib["flagged"] == cli["flagged"] > 0
    (tmp_path / "accepted.json").unlink()
    with pytest.warns(UserWarning, match=r"checks\.baseline .*accepted\.json does not exist yet"):
        assert check(load_recipe(recipe)).to_dict()["baseline"]["entries"] == 0  # the recipe's file: empty
    with pytest.raises(DataError, match="accepted.json: baseline file not found"):
        check(load_recipe(recipe), baseline=tmp_path / "accepted.json")  # a path given explicitly: an error
    updated = check(load_recipe(recipe), update_baseline=True)
    assert updated.passed and (tmp_path / "accepted.json").read_bytes() == accepted
    assert not check(load_recipe(recipe), baseline=None).passed  # the same flags, nothing accepted: fails
