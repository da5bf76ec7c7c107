"""A ``transformers.Trainer`` run audited through a recipe (influence_cli.loading.hf_trainer):
checkpoint folders, learning rates from ``trainer_state.json``, scores against the float64
reference, and the ``score`` / ``mislabel-detect`` commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import ATOL, RTOL
from fixtures.hf_runs import LABELS, make_model_dir, make_texts, train_with_trainer, write_jsonl
from influence_cli import Session, load_recipe, score
from influence_cli.cli import app
from influence_cli.engine import train_pass
from influence_cli.errors import CheckpointError
from influence_cli.methods import Method
from influence_cli.loading.checkpoints import list_checkpoints
from influence_cli.loading.hf_trainer import learning_rate_at
from reference import reference_grads, reference_scores, reference_self_influence

runner = CliRunner()
N_TRAIN, N_TEST, LR, STEPS = 16, 3, 0.05, 4
RECIPE = {"model": {"transformers": "model"}, "checkpoints": {"hf_trainer_dir": "out"},
          "data": {"train": {"format": "jsonl", "path": "train.jsonl", "max_length": 16},
                   "test": {"format": "jsonl", "path": "test.jsonl", "max_length": 16}},
          "batch_size": 5, "device": "cpu", "dtype": "float64", "output": "audit"}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """Fine-tune the tiny BERT for 4 steps (linear decay from 0.05), checkpoints at steps 2 and 4."""
    folder = tmp_path_factory.mktemp("hf_run")
    make_model_dir(folder / "model")
    rows = make_texts(N_TRAIN, flip=(3,))
    write_jsonl(folder / "train.jsonl", rows)
    write_jsonl(folder / "test.jsonl", make_texts(N_TEST, seed=1))
    train_with_trainer(folder / "model", rows, folder / "out", steps=STEPS, save_steps=2, lr=LR)
    (folder / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    return folder


def _copy(run: Path, tmp_path: Path, **changes) -> Path:
    """A copy of the run whose recipe has top-level keys changed."""
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    (folder / "recipe.yaml").write_text(yaml.safe_dump({**RECIPE, **changes}))
    return folder


def test_checkpoint_folders_and_learning_rates_from_trainer_state(run):
    refs = list_checkpoints(load_recipe(run / "recipe.yaml"))
    assert [r.path.relative_to(run / "out").as_posix() for r in refs] == [
        "checkpoint-2/model.safetensors", "checkpoint-4/model.safetensors"]
    for ref, step in zip(refs, (2, 4)):
        history = json.loads((ref.path.parent / "trainer_state.json").read_text())["log_history"]
        assert ref.learning_rate == next(e["learning_rate"] for e in history if e["step"] == step)
        # linear decay: the optimizer's step s ran at η = LR · (1 − (s − 1)/STEPS)
        assert ref.learning_rate == pytest.approx(LR * (1 - (step - 1) / STEPS))


def test_learning_rate_is_the_one_logged_at_or_just_before_the_step(tmp_path):
    state = tmp_path / "trainer_state.json"
    state.write_text(json.dumps({"log_history": [
        {"step": 1, "learning_rate": 0.1, "loss": 1.0}, {"step": 3, "learning_rate": 0.05, "loss": 0.5},
        {"step": 4, "eval_loss": 0.4}]}))
    assert [learning_rate_at(state, s, "ck") for s in (1, 2, 3, 4, 9)] == [0.1, 0.1, 0.05, 0.05, 0.05]
    with pytest.raises(CheckpointError, match="logs no learning_rate at or before step 0"):
        learning_rate_at(state, 0, "ck")
    with pytest.raises(CheckpointError, match=f"ck: learning_rate is auto but {tmp_path}/nothing.json is missing"):
        learning_rate_at(tmp_path / "nothing.json", 4, "ck")


@pytest.fixture(scope="module")
def reference(run):
    """Float64 brute-force gradients (SDPA attention, one globally padded batch) per checkpoint."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    config = AutoConfig.from_pretrained(run / "model", attn_implementation="sdpa")
    factory = lambda: AutoModelForSequenceClassification.from_config(config)  # noqa: E731
    states = [load_file(str(run / "out" / f"checkpoint-{s}" / "model.safetensors")) for s in (2, 4)]
    out = []
    for name, n in (("train", N_TRAIN), ("test", N_TEST)):
        rows = [json.loads(line) for line in (run / f"{name}.jsonl").read_text().splitlines()][:n]
        x = dict(tokenizer([r["text"] for r in rows], padding=True, return_tensors="pt"))
        y = torch.tensor([LABELS.index(r["label"]) for r in rows])
        out.append(reference_grads(factory, states, x, y))
    return out


@pytest.mark.filterwarnings("ignore:There is a performance drop")
@pytest.mark.parametrize("method", ["tracin", "gas-l"])
def test_scores_match_the_float64_reference(run, reference, method):
    session = Session.from_recipe(load_recipe(run / "recipe.yaml"), need_test=True)
    result = score(session, method=method, k=N_TRAIN, keep_matrix=True)
    want = reference_scores(method, reference[0], reference[1], session.learning_rates)
    torch.testing.assert_close(result.passes.matrix, want, rtol=RTOL, atol=ATOL)
    self_inf = train_pass(session, Method(method)).self_influence
    torch.testing.assert_close(self_inf, reference_self_influence(method, reference[0], session.learning_rates),
                               rtol=RTOL, atol=ATOL)


def test_score_and_mislabel_detect_commands(run, tmp_path):
    res = runner.invoke(app, ["score", str(run / "recipe.yaml"), "--out", str(tmp_path / "s"), "-k", "3", "-q"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "s" / "influence.json").read_text())
    texts = [json.loads(line)["text"] for line in (run / "train.jsonl").read_text().splitlines()]
    assert [c["learning_rate"] for c in data["checkpoints"]] == pytest.approx([0.0375, 0.0125])
    assert all(e["text"] == texts[e["train_index"]] for t in data["test"] for e in t["proponents"])
    top = data["test"][0]["proponents"][0]
    assert f"{top['train_index']}: {top['text'][:40]}" in (tmp_path / "s" / "summary.md").read_text()
    res = runner.invoke(app, ["mislabel-detect", str(run / "recipe.yaml"), "--out", str(tmp_path / "m"),
                              "--top", "2", "-q"])
    assert res.exit_code in (0, 1), res.output
    ranking = json.loads((tmp_path / "m" / "mislabels.json").read_text())["ranking"]
    assert sorted(e["train_index"] for e in ranking) == list(range(N_TRAIN))
    assert [e["given_label"] for e in sorted(ranking, key=lambda e: e["train_index"])][:4] == [0, 1, 0, 0]
    assert all(e["text"] == texts[e["train_index"]] for e in ranking)


def test_missing_trainer_state_is_one_line_naming_the_file(run, tmp_path):
    folder = _copy(run, tmp_path)
    (folder / "out" / "checkpoint-4" / "trainer_state.json").unlink()
    res = runner.invoke(app, ["score", str(folder / "recipe.yaml"), "-q"])
    assert res.exit_code == 2
    assert res.stderr.strip() == (f"error: checkpoints.hf_trainer_dir[1] ({folder}/out/checkpoint-4): learning_rate "
                                  f"is auto but {folder}/out/checkpoint-4/trainer_state.json is missing; set "
                                  "checkpoints.learning_rate in the recipe")
    folder2 = _copy(run, tmp_path / "b", checkpoints={"hf_trainer_dir": "out", "learning_rate": [0.2, 0.1]})
    (folder2 / "out" / "checkpoint-4" / "trainer_state.json").unlink()
    assert [r.learning_rate for r in list_checkpoints(load_recipe(folder2 / "recipe.yaml"))] == [0.2, 0.1]


def test_pytorch_model_bin_loads_only_when_trusted(run, tmp_path):
    folder = _copy(run, tmp_path)
    for step in (2, 4):
        ckpt = folder / "out" / f"checkpoint-{step}"
        torch.save(load_file(str(ckpt / "model.safetensors")), ckpt / "pytorch_model.bin")
        (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"only pytorch_model.bin .* set `trust_checkpoints: true`"):
        list_checkpoints(load_recipe(folder / "recipe.yaml"))
    (folder / "recipe.yaml").write_text(yaml.safe_dump({**RECIPE, "trust_checkpoints": True}))
    session = Session.from_recipe(load_recipe(folder / "recipe.yaml"))
    want = load_file(str(run / "out" / "checkpoint-4" / "model.safetensors"))
    assert all(torch.equal(session.weights[1][k], want[k].double()) for k in want)


@pytest.mark.parametrize("setup,message", [
    (lambda out: shutil.rmtree(out), "checkpoints.hf_trainer_dir: not a folder: "),
    (lambda out: [shutil.rmtree(d) for d in out.glob("checkpoint-*")], "no checkpoint-<step>/ folder in "),
    (lambda out: (out / "checkpoint-2" / "model.safetensors").rename(out / "checkpoint-2" / "x"),
     r"checkpoints.hf_trainer_dir\[0\] .*: no model.safetensors or pytorch_model.bin in "),
    (lambda out: (out / "checkpoint-2" / "model.safetensors").rename(out / "checkpoint-2" / "model.safetensors.index.json"),
     "sharded checkpoints"),
])
def test_bad_run_folders_are_named(run, tmp_path, setup, message):
    folder = _copy(run, tmp_path)
    setup(folder / "out")
    with pytest.raises(CheckpointError, match=message):
        list_checkpoints(load_recipe(folder / "recipe.yaml"))


def test_learning_rate_list_must_match_the_folders(run, tmp_path):
    folder = _copy(run, tmp_path, checkpoints={"hf_trainer_dir": "out", "learning_rate": [0.1]})
    with pytest.raises(CheckpointError, match="1 learning rates for 2 checkpoint folders"):
        list_checkpoints(load_recipe(folder / "recipe.yaml"))
