"""Causal language models: ``model: {transformers: DIR, task: causal-lm}`` with jsonl ``text`` or
``prompt`` + ``completion`` rows, checked against the float64 brute-force reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import ATOL, RTOL
from fixtures.causal_lm import build_gpt2, make_lm_tokenizer, write_lm_run
from fixtures.hf_runs import write_jsonl
from influence_cli import InfluenceError, Session, check, mislabel_detect, score, target_identify, write_reports
from influence_cli.engine import train_pass
from influence_cli.errors import DataError, RecipeError
from influence_cli.loading.data import load_split
from influence_cli.methods import Method
from influence_cli.recipe import parse_recipe
from reference import next_token_nll, reference_grads, reference_scores, reference_self_influence


pytestmark = pytest.mark.usefixtures("one_thread")


def _recipe(folder: Path, data: dict) -> object:
    return parse_recipe(data, base_dir=folder)


@pytest.fixture(scope="module", params=[False, True], ids=["text", "prompt-completion"])
def lm_run(request, tmp_path_factory, one_thread) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("lm")
    return folder, write_lm_run(folder, prompts=request.param)


def _rows(folder: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()]


def _reference_example(tokenizer, row: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One unpadded example: its ids, and the targets with the prompt's tokens (and none other) at −100."""
    if "text" in row:
        ids = tokenizer(row["text"])["input_ids"]
        skip = 0
    else:
        head = tokenizer(row["prompt"])["input_ids"]
        ids, skip = head + tokenizer(row["completion"], add_special_tokens=False)["input_ids"], len(head)
    targets = torch.tensor([[-100] * skip + ids[skip:]])
    return {"input_ids": torch.tensor([ids])}, targets


@pytest.fixture(scope="module")
def reference(lm_run):
    """Float64 per-example gradients of the train and test rows, one unpadded example at a time."""
    folder, data = lm_run
    tokenizer = make_lm_tokenizer()
    states = [torch.load(folder / c["path"], weights_only=True) for c in data["checkpoints"]]
    out = []
    for split in ("train", "test"):
        examples = [_reference_example(tokenizer, row) for row in _rows(folder, split)]
        out.append(reference_grads(build_gpt2, states, [x for x, _ in examples], [y for _, y in examples],
                                   loss=next_token_nll))
    return out


@pytest.mark.parametrize("method,factorize", [("tracin", True), ("gas", True), ("gas-l", False)])
def test_scores_and_self_influence_match_the_float64_reference(lm_run, reference, method, factorize):
    folder, data = lm_run
    session = Session.from_recipe(_recipe(folder, {**data, "factorize": factorize}), need_test=True)
    assert session.train.batch(torch.arange(4))[0]["attention_mask"].min() == 0  # the batches really are padded
    result = score(session, method=method, k=3, keep_matrix=True)
    want = reference_scores(method, reference[0], reference[1], session.learning_rates)
    torch.testing.assert_close(result.matrix, want, rtol=RTOL, atol=ATOL)
    self_inf = train_pass(session, Method(method)).self_influence
    torch.testing.assert_close(self_inf, reference_self_influence(method, reference[0], session.learning_rates),
                               rtol=RTOL, atol=ATOL)


def test_reports_show_the_texts(lm_run, tmp_path):
    folder, data = lm_run
    result = score(_recipe(folder, data), k=2)
    entry = result.to_dict()["test"][0]
    rows = _rows(folder, "train")
    shown = [r["text"] if "text" in r else f"{r['prompt']} || {r['completion']}" for r in rows]
    assert "label" not in entry and "prediction" not in entry
    assert all(e["text"] == shown[e["train_index"]] for e in entry["proponents"] + entry["opponents"])
    written = "".join(p.read_text() for p in write_reports(result, tmp_path) if p.suffix in (".md", ".csv"))
    assert shown[entry["proponents"][0]["train_index"]] in written and "None" not in written  # no label columns


def test_only_completion_tokens_count(tmp_path):
    data = write_lm_run(tmp_path, prompts=True)
    write_jsonl(tmp_path / "train.jsonl", [{"prompt": "the movie", "completion": "was good"},
                                           {"prompt": "a", "completion": "b c"}])
    train = load_split(_recipe(tmp_path, data), "train")
    x, y = train.batch(torch.arange(2))
    bos, pad = 2, 0
    vocab = make_lm_tokenizer().get_vocab()
    assert x["input_ids"][0].tolist() == [bos, vocab["the"], vocab["movie"], vocab["was"], vocab["good"]]
    assert x["input_ids"][1].tolist() == [bos, vocab["a"], vocab["[UNK]"], vocab["[UNK]"], pad]  # padded right
    assert y[0].tolist() == [-100, -100, -100, vocab["was"], vocab["good"]]
    assert y[1].tolist() == [-100, -100, vocab["[UNK]"], vocab["[UNK]"], -100]
    assert x["attention_mask"].tolist() == [[1] * 5, [1] * 4 + [0]]
    assert train.describe(0) == "the movie || was good"


@pytest.mark.parametrize("row,message", [
    ({"text": ""}, "row 0 has no token to predict"),
    ({"prompt": "the movie", "completion": ""}, "row 0 has no token to predict"),
])
def test_rows_with_nothing_to_predict_are_errors(tmp_path, row, message):
    data = write_lm_run(tmp_path)
    write_jsonl(tmp_path / "train.jsonl", [row])
    with pytest.raises(DataError, match=message):
        load_split(_recipe(tmp_path, data), "train")


def test_label_based_commands_need_a_classification_task(lm_run):
    folder, data = lm_run
    session = Session.from_recipe(_recipe(folder, {**data, "checks": {"max_flagged_mislabel_fraction": 0.0}}),
                                  need_test=True)
    for command in (lambda: mislabel_detect(session), lambda: target_identify(session), lambda: check(session)):
        with pytest.raises(InfluenceError) as info:
            command()
        assert "needs a classification task" in info.value.message and "\n" not in info.value.message


def test_recipe_loss_of_a_causal_lm(tmp_path):
    base = {"model": {"transformers": "m", "task": "causal-lm"}, "checkpoints": [{"path": "c.pt"}],
            "data": {"train": {"format": "jsonl", "path": "t.jsonl"}}}
    assert _recipe(tmp_path, base).loss == "token_nll"
    assert _recipe(tmp_path, {**base, "loss": "my.py:nll"}).loss == "my.py:nll"
    with pytest.raises(RecipeError, match="a causal-lm model takes token_nll or a callable, not 'cross_entropy'"):
        _recipe(tmp_path, {**base, "loss": "cross_entropy"})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_causal_lm_scores_on_cuda_match_the_reference(lm_run, reference):
    folder, data = lm_run
    session = Session.from_recipe(_recipe(folder, {**data, "device": "cuda"}), need_test=True)
    result = score(session, method="gas-l", k=3, keep_matrix=True)
    want = reference_scores("gas-l", reference[0], reference[1], session.learning_rates)
    torch.testing.assert_close(result.matrix.cpu(), want, rtol=RTOL, atol=ATOL)


def test_a_save_pretrained_checkpoint_without_the_tied_output_layer(lm_run, tmp_path):
    """transformers' ``save_pretrained`` keeps one copy of the tied embedding / output weights."""
    from safetensors.torch import load_file

    folder, data = lm_run
    model = build_gpt2()
    model.load_state_dict(torch.load(folder / data["checkpoints"][0]["path"], weights_only=True))
    model.save_pretrained(tmp_path)
    assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")
    one = {**data, "checkpoints": [{"path": str(tmp_path / "model.safetensors"), "learning_rate": 0.5}]}
    want = score(_recipe(folder, {**data, "checkpoints": data["checkpoints"][:1]}), k=2, keep_matrix=True).matrix
    torch.testing.assert_close(score(_recipe(folder, one), k=2, keep_matrix=True).matrix, want, rtol=RTOL, atol=ATOL)


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap over fused SDPA: a loop, same values
def test_sdpa_attention_gives_the_reference_scores(lm_run, reference):
    folder, data = lm_run
    recipe = _recipe(folder, {**data, "model": {**data["model"], "kwargs": {"attn_implementation": "sdpa"}}})
    session = Session.from_recipe(recipe, need_test=True)
    assert session.model.config._attn_implementation == "sdpa"
    want = reference_scores("tracin", reference[0], reference[1], session.learning_rates)
    torch.testing.assert_close(score(session, k=2, keep_matrix=True).matrix, want, rtol=RTOL, atol=ATOL)
