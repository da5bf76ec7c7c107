"""transformers models from a local folder and jsonl/csv text data (influence_cli.loading.transformers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fixtures.hf_runs import LABELS, make_model_dir, make_texts, write_jsonl
from influence_cli import Session, score
from influence_cli.errors import DataError, RecipeError
from influence_cli.gradients.layers import select_parameters
from influence_cli.gradients.per_example import PerExampleGradients
from influence_cli.loading.data import load_split
from influence_cli.loading.models import build_model
from influence_cli.losses import BUILTIN_LOSSES
from influence_cli.recipe import parse_recipe


def _recipe(folder: Path, **changes):
    data = {"model": {"transformers": "model"}, "checkpoints": [{"path": "model/model.safetensors",
                                                                 "learning_rate": 0.1}],
            "data": {"train": {"format": "jsonl", "path": "train.jsonl"}}, "device": "cpu", "dtype": "float64",
            "batch_size": 4}
    for key, value in changes.items():
        section, _, sub = key.partition("__")
        if sub:
            data[section] = {**data[section], sub: value}
        else:
            data[key] = value
    return parse_recipe(data, base_dir=folder)


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("text")
    make_model_dir(folder / "model")
    make_model_dir(folder / "distil", model_type="distilbert")
    write_jsonl(folder / "train.jsonl", make_texts(10))
    return folder


def test_jsonl_tokenised_with_dynamic_padding_and_label2id(text_dir):
    train = load_split(_recipe(text_dir), "train")
    rows = make_texts(10)
    assert train.labels.tolist() == [LABELS.index(r["label"]) for r in rows]
    lengths = [len(r["text"].split()) + 2 for r in rows]  # [CLS] ... [SEP]
    for idx in ([0, 1, 2], [3, 7], [9]):
        x, y = train.batch(torch.tensor(idx))
        assert set(x) == {"input_ids", "token_type_ids", "attention_mask"}
        assert x["input_ids"].shape[1] == max(lengths[i] for i in idx)  # padded to this batch's longest
        assert x["attention_mask"].sum(1).tolist() == [lengths[i] for i in idx]
    truncated = load_split(_recipe(text_dir, data={"train": {"format": "jsonl", "path": "train.jsonl",
                                                             "max_length": 4}}), "train")
    assert truncated.batch(torch.arange(10))[0]["input_ids"].shape[1] == 4
    assert train.describe(0) == rows[0]["text"] and train.describe_key == "text"


def test_csv_text_pairs_and_integer_labels(text_dir, tmp_path):
    (tmp_path / "pairs.csv").write_text("premise,hypothesis,y\ngood movie,the plot,1\nbad film,\"a, story\",0\n")
    recipe = _recipe(text_dir, data={"train": {"format": "csv", "path": str(tmp_path / "pairs.csv"),
                                               "text_column": "premise", "text_pair_column": "hypothesis",
                                               "label_column": "y"}})
    train = load_split(recipe, "train")
    x, y = train.batch(torch.tensor([0, 1]))
    assert y.tolist() == [1, 0]
    assert x["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 0]  # [CLS] a a [SEP] b b [SEP] [PAD]
    assert train.describe(1) == "bad film || a, story"


def test_inputs_the_model_does_not_take_are_dropped(text_dir):
    recipe = _recipe(text_dir, model={"transformers": "distil"})
    x, _ = load_split(recipe, "train").batch(torch.tensor([0, 1]))
    assert set(x) == {"input_ids", "attention_mask"}  # DistilBERT has no token_type_ids


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap over fused SDPA: a loop, same values
@pytest.mark.parametrize("model_type,attention", [("bert", "eager"), ("bert", "sdpa"), ("distil", "sdpa")])
def test_per_example_gradients_do_not_depend_on_padding(text_dir, model_type, attention):
    """g(z) from a padded batch (additive 4D mask under vmap) = g(z) of z alone, unpadded."""
    recipe = _recipe(text_dir, model={"transformers": "model" if model_type == "bert" else "distil",
                                      "kwargs": {"attn_implementation": attention}})
    model = build_model(recipe).double().eval()
    assert model.config._attn_implementation == attention
    train = load_split(recipe, "train")
    grads = PerExampleGradients(model, select_parameters(model, None), BUILTIN_LOSSES["cross_entropy"])
    weights = {k: v.detach().double() for k, v in model.state_dict().items()}
    idx = torch.arange(6)
    batched = grads(weights, *train.batch(idx)).g
    assert train.batch(idx)[0]["attention_mask"].min() == 0  # the batch really is padded
    alone = torch.cat([grads(weights, *train.batch(idx[i:i + 1])).g for i in range(len(idx))])
    torch.testing.assert_close(batched, alone, rtol=1e-9, atol=1e-12)
    assert batched.abs().sum(1).min() > 0


def test_default_attention_is_eager(text_dir):
    assert build_model(_recipe(text_dir)).config._attn_implementation == "eager"


def test_score_reports_the_texts(text_dir):
    recipe = _recipe(text_dir, data={"train": {"format": "jsonl", "path": "train.jsonl"},
                                     "test": {"format": "jsonl", "path": "train.jsonl"}})
    data = score(recipe, test_indices=[0, 1], k=2).to_dict()
    rows = make_texts(10)
    assert data["test"][1]["text"] == rows[1]["text"]
    for entry in data["test"][0]["proponents"] + data["test"][0]["opponents"]:
        assert entry["text"] == rows[entry["train_index"]]["text"]
        assert {"train_index", "score", "label"} <= set(entry)


def test_long_texts_are_shortened_in_reports(text_dir, tmp_path):
    write_jsonl(tmp_path / "long.jsonl", [{"text": "good " * 100, "label": "pos"}])
    train = load_split(_recipe(text_dir, data={"train": {"format": "jsonl", "path": str(tmp_path / "long.jsonl")}}),
                       "train")
    assert len(train.describe(0)) == 200 and train.describe(0).endswith("…")


@pytest.mark.parametrize("rows,message", [
    ([{"text": "good", "label": "meh"}], "label 'meh' of row 0 is not a class id or a name in the model "
                                         "config's label2id (neg, pos)"),
    ([{"text": "good", "label": "pos"}, {"txt": "bad", "label": "neg"}], "data.train.text_column: row 1 of"),
])
def test_bad_rows_are_named(text_dir, tmp_path, rows, message):
    write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_split(_recipe(text_dir, data={"train": {"format": "jsonl", "path": str(tmp_path / "bad.jsonl")}}),
                   "train")


def test_malformed_jsonl_line_is_named(text_dir, tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "good", "label": 1}\n{oops\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        load_split(_recipe(text_dir, data={"train": {"format": "jsonl", "path": str(tmp_path / "bad.jsonl")}}),
                   "train")


def test_model_folder_errors(text_dir, tmp_path):
    with pytest.raises(RecipeError, match="model.transformers: not a local folder: .*nowhere .nothing is downloaded"):
        build_model(_recipe(text_dir, model={"transformers": "nowhere"}))
    with pytest.raises(RecipeError, match="model.transformers: cannot read a model config"):
        build_model(_recipe(text_dir, model={"transformers": str(tmp_path)}))
    with pytest.raises(RecipeError, match="model.kwargs.not_a_setting: not a setting of the bert config"):
        build_model(_recipe(text_dir, model={"transformers": "model", "kwargs": {"not_a_setting": 1}}))
    with pytest.raises(RecipeError, match="model: give exactly one of `factory`, `torchvision` or `transformers`"):
        _recipe(text_dir, model={"transformers": "model", "torchvision": "resnet18"})


def test_text_data_needs_a_tokenizer(text_dir):
    recipe = _recipe(text_dir, model={"torchvision": "resnet18"})
    with pytest.raises(RecipeError, match="data.train.tokenizer: format jsonl needs a tokenizer"):
        load_split(recipe, "train")
    recipe = _recipe(text_dir, model={"torchvision": "resnet18"},
                     data={"train": {"format": "jsonl", "path": "train.jsonl", "tokenizer": "model"}})
    with pytest.raises(DataError, match=r"label 'neg' of row 0 .* label2id \(none\)"):
        load_split(recipe, "train")  # no transformers config: names cannot be mapped


def test_checkpoint_in_the_model_folder_loads_into_a_session(text_dir):
    session = Session.from_recipe(_recipe(text_dir))
    assert session.learning_rates == [0.1]
    assert session.layout.layer_names[-1] == "classifier"
    assert session.predict(session.train, torch.arange(3))[0].shape == (3,)
    globbed = Session.from_recipe(_recipe(text_dir, layers=["*.layer.1.*", "classifier"])).layout
    assert globbed.layer_names[0] == "bert.encoder.layer.1.attention.self.query"
    assert all(n.startswith(("bert.encoder.layer.1.", "classifier.")) for n in globbed.names)
