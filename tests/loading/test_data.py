"""Data splits: tensor files (.pt, .safetensors), factories returning tensors or a Dataset, batching."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from influence_cli import load_recipe, score
from influence_cli.cli import app
from influence_cli.errors import DataError, InfluenceError
from influence_cli.loading.data import load_split
from influence_cli.loading.examples import DatasetExamples, TensorExamples

FACTORY = '''
import torch
from torch.utils.data import Dataset


class Pairs(Dataset):
    def __init__(self, path):
        self.data = torch.load(path)

    def __len__(self):
        return len(self.data["labels"])

    def __getitem__(self, i):
        return self.data["inputs"][i], self.data["labels"][i]


def dataset(path):
    return Pairs(path)


def tensors(path):
    data = torch.load(path)
    return data["inputs"], data["labels"]


def broken():
    raise ValueError("no disk")


def wrong():
    return 3


def text():
    return "hello"


def strings():
    return ["a", "b"], torch.tensor([0, 1])


def word_labels():
    return torch.zeros(2, 6), ["cat", "dog"]


def word_pairs():
    return [(torch.zeros(6), "cat"), (torch.ones(6), "dog")]


def text_pairs():
    return [("a cat", 0), ("a dog", 1)]
'''

EXPECTED = "expected a map-style Dataset of (input, label) pairs or an (inputs, labels) tuple of tensors"


def test_batches_follow_the_given_indices():
    x, y = torch.arange(10.0)[:, None], torch.arange(10) % 3
    examples = TensorExamples({"a": x, "b": 2 * x}, y, name="data.train")
    idx = torch.tensor([7, 1, 4, 0, 9])
    got = list(examples.batches(2, idx))
    assert [b[0].tolist() for b in got] == [[7, 1], [4, 0], [9]]
    assert [b[1]["b"][:, 0].tolist() for b in got] == [[14.0, 2.0], [8.0, 0.0], [18.0]]
    assert torch.cat([b[2] for b in got]).tolist() == y[idx].tolist()


@pytest.mark.parametrize("train", [
    {"format": "factory", "factory": "data.py:dataset", "kwargs": {"path": "train.pt"}},
    {"format": "factory", "factory": "data.py:tensors", "kwargs": {"path": "train.pt"}},
    {"format": "tensors", "path": "train.safetensors"},
])
def test_other_sources_give_the_same_scores(tiny_recipe, monkeypatch, train):
    run = tiny_recipe("mlp", n_train=6, n_test=2)
    (run.dir / "data.py").write_text(FACTORY)
    save_file({"inputs": run.train[0], "labels": run.train[1]}, str(run.dir / "train.safetensors"))
    want = score(load_recipe(run.recipe_path), k=3, keep_matrix=True).passes
    monkeypatch.chdir(run.dir)  # the factory reads "train.pt" relative to the working directory
    run.rewrite(data={**run.data["data"], "train": train})
    recipe = load_recipe(run.recipe_path)
    examples = load_split(recipe, "train")
    assert isinstance(examples, DatasetExamples if train.get("factory") == "data.py:dataset" else TensorExamples)
    assert examples.labels.tolist() == run.train[1].tolist()
    got = score(recipe, k=3, keep_matrix=True).passes
    torch.testing.assert_close(got.matrix, want.matrix, rtol=0, atol=0)
    assert got.proponents[1].tolist() == want.proponents[1].tolist()


@pytest.mark.parametrize("factory, message", [
    ("data.py:broken", "data.train.factory: data.py:broken raised ValueError: no disk"),
    ("data.py:wrong", f"data.train.factory: data.py:wrong returned int; {EXPECTED}"),
    ("data.py:text", f"data.train.factory: data.py:text returned str; {EXPECTED}"),
    ("data.py:strings", "data.train.factory: data.py:strings returned tuple (list, Tensor); the inputs must be a "
                        "tensor or a dict of tensors"),
    ("data.py:word_labels", "data.train.factory: data.py:word_labels returned tuple (Tensor, list); the labels must "
                            "be numbers (a tensor of class indices or targets)"),
    ("data.py:nothing", "data.train.factory: 'data.py' has no callable named 'nothing'"),
])
def test_factory_errors(tiny_recipe, factory, message):
    with pytest.raises(InfluenceError) as info:
        _factory_split(tiny_recipe, factory)
    assert info.value.message == message


def _factory_split(tiny_recipe, factory: str):
    """The training split of a tiny recipe whose data comes from ``data.py:<factory>`` (:data:`FACTORY`)."""
    run = tiny_recipe("mlp", n_train=3, n_test=2)
    (run.dir / "data.py").write_text(FACTORY)
    run.rewrite(data={"train": {"format": "factory", "factory": factory}})
    return load_split(load_recipe(run.recipe_path), "train")


@pytest.mark.parametrize("factory, message", [
    ("data.py:word_pairs", "data.train: cannot batch the items (each must be an (input, label) pair, inputs of one "
                           "shape, numeric labels): "),
    ("data.py:text_pairs", "data.train: item inputs must be tensors (or dicts of tensors), got str"),
])
def test_dataset_items_that_are_not_tensors_are_one_line_errors(tiny_recipe, factory, message):
    examples = _factory_split(tiny_recipe, factory)
    with pytest.raises(DataError) as info:
        examples.batch(torch.arange(2))
    assert info.value.message.startswith(message)  # then PyTorch's own words


def test_a_factory_returning_text_gives_one_line_and_exit_2(tiny_recipe):
    run = tiny_recipe("mlp", n_train=3, n_test=2)
    (run.dir / "data.py").write_text(FACTORY)
    run.rewrite(data={**run.data["data"], "train": {"format": "factory", "factory": "data.py:text"}})
    res = CliRunner().invoke(app, ["score", str(run.recipe_path), "-q", "--out", str(run.dir / "report")])
    assert (res.exit_code, res.stdout) == (2, "")
    assert res.stderr == f"error: data.train.factory: data.py:text returned str; {EXPECTED}\n"
    assert not (run.dir / "report").exists()
