"""What reports show of an example (influence_cli.loading.examples): class names from every kind of
data (image folders, torchvision datasets, a transformers config, the recipe's ``data.labels``),
texts and file paths, and the helpers that shorten them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fixtures.hf_runs import make_model_dir, make_texts, write_jsonl
from fixtures.image_runs import CLASSES, make_imagefolder
from influence_cli import Session
from influence_cli.errors import RecipeError
from influence_cli.loading.data import load_split
from influence_cli.loading.examples import TensorExamples, described, label_text, shortened
from influence_cli.recipe import parse_recipe

TEXT = "the movie was quite good and the story was very great"


def _recipe(folder: Path, train: dict, test: dict | None = None, **top) -> object:
    data = {"model": {"torchvision": "resnet18"}, "checkpoints": [{"path": "ck.pt", "learning_rate": 0.1}],
            "data": {"train": train, **({"test": test} if test else {})}, "device": "cpu", **top}
    return parse_recipe(data, base_dir=folder)


def test_image_folders_name_classes_by_folder_and_keep_the_training_names(tmp_path: Path) -> None:
    make_imagefolder(tmp_path / "train", 1)
    make_imagefolder(tmp_path / "test", 1, classes=("stripes",))
    recipe = _recipe(tmp_path, {"format": "imagefolder", "root": "train"}, {"format": "imagefolder", "root": "test"})
    train, test = load_split(recipe, "train"), load_split(recipe, "test")
    assert train.classes == test.classes == list(CLASSES)
    assert test.labels.tolist() == [2] and test.label_fields("label", 2) == {"label": 2, "label_name": "stripes"}
    assert test.description(0) == {"path": str(tmp_path / "test" / "stripes" / "000.png")}
    assert train.class_name(7) is None and train.class_name(True) is None  # no name: the id stays


def test_torchvision_datasets_name_their_classes(tmp_path: Path) -> None:
    make_imagefolder(tmp_path / "train", 1, classes=("circle", "square"))
    folder = load_split(_recipe(tmp_path, {"format": "torchvision", "name": "ImageFolder", "root": "train"}), "train")
    assert folder.classes == ["circle", "square"] and folder.describe(1).endswith("square/000.png")
    fake = load_split(_recipe(tmp_path, {"format": "torchvision", "name": "FakeData", "kwargs": {"size": 2}}), "train")
    assert fake.classes is None and fake.label_fields("label", 1) == {"label": 1}  # FakeData has no class names


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("names")
    make_model_dir(folder / "model")  # id2label {0: neg, 1: pos}
    make_model_dir(folder / "unnamed")
    config = json.loads((folder / "unnamed" / "config.json").read_text())
    for key in ("id2label", "label2id"):
        config.pop(key)
    (folder / "unnamed" / "config.json").write_text(json.dumps({**config, "num_labels": 2}))
    write_jsonl(folder / "train.jsonl", make_texts(4))
    write_jsonl(folder / "ids.jsonl", [{"text": TEXT, "label": 1}, {"text": " very\n  sad ", "label": "0"}])
    write_jsonl(folder / "placeholders.jsonl", [{"text": "good", "label": "LABEL_1"}])
    return folder


def _text(folder: Path, path: str, model: str = "model") -> object:
    spec = {"format": "jsonl", "path": path}
    return load_split(parse_recipe({"model": {"transformers": model}, "checkpoints": [{"path": "x"}],
                                    "data": {"train": spec}}, base_dir=folder), "train")


@pytest.mark.parametrize("path, model, classes", [
    ("train.jsonl", "model", ["neg", "pos"]),        # string labels through label2id
    ("ids.jsonl", "model", ["neg", "pos"]),          # integer labels: the config's id2label
    ("ids.jsonl", "unnamed", None),                  # transformers' placeholders LABEL_0, LABEL_1 are no names
    ("placeholders.jsonl", "unnamed", ["LABEL_0", "LABEL_1"]),  # ... unless the data's labels are those
])
def test_text_data_names_classes_from_the_model_config(text_dir: Path, path: str, model: str,
                                                       classes: list[str] | None) -> None:
    assert _text(text_dir, path, model).classes == classes


def test_text_examples_describe_their_own_text(text_dir: Path) -> None:
    data = _text(text_dir, "ids.jsonl")
    assert data.description(1) == {"text": "very sad"}  # whitespace collapsed
    assert data.describe(0, limit=None) == TEXT and data.describe(0, limit=12) == "the movie w…"


def test_recipe_labels_name_tensor_data(tiny_recipe) -> None:
    run = tiny_recipe("mlp", n_train=6, n_test=2)
    run.data["data"]["labels"] = ["cat", "dog", "eel"]
    session = Session.from_recipe(parse_recipe(run.data, base_dir=run.dir), need_test=True)
    assert session.train.classes == session.test.classes == ["cat", "dog", "eel"]
    assert session.train.label_fields("given_label", 2) == {"given_label": 2, "given_label_name": "eel"}
    assert TensorExamples(torch.zeros(2, 1), torch.zeros(2)).label_fields("label", 0) == {"label": 0}


@pytest.mark.parametrize("labels, message", [
    (["cat", "dog"], "data.labels: 2 class names for a model with 3 outputs"),
    (["cat", "dog", "cat"], "data.labels: class name 'cat' is given twice"),
])
def test_recipe_labels_must_fit_the_model(tiny_recipe, labels: list[str], message: str) -> None:
    run = tiny_recipe("mlp", n_train=6, n_test=2)
    run.data["data"]["labels"] = labels
    with pytest.raises(RecipeError) as info:
        Session.from_recipe(parse_recipe(run.data, base_dir=run.dir))
    assert info.value.message == message


def test_a_factory_datasets_classes_name_it(tmp_path: Path) -> None:
    (tmp_path / "data.py").write_text(
        "import torch\nclass Named(torch.utils.data.Dataset):\n    classes = ['no', 'yes']\n"
        "    def __len__(self):\n        return 2\n    def __getitem__(self, i):\n        return torch.zeros(3), i\n")
    split = load_split(_recipe(tmp_path, {"format": "factory", "factory": "data.py:Named"}), "train")
    assert split.classes == ["no", "yes"] and split.label_fields("label", 1)["label_name"] == "yes"


def test_how_an_entry_is_shown() -> None:
    entry = {"label": 3, "label_name": "cat", "prediction": 5, "prediction_name": None, "text": TEXT}
    assert label_text(entry, "label") == "cat (3)" and label_text(entry, "prediction") == 5
    assert label_text({"label": None}, "label") is None
    assert described(entry) == ("text", TEXT) and described({"label": 1}) is None
    assert shortened(entry, 10) == "the movie…" and shortened(entry, 200) == TEXT
    path = {"path": "/data/train/circle/007.png"}
    assert shortened(path, 20) == "…/circle/007.png"          # whole folder names from the end
    assert shortened(path, 9) == "…/007.png" and shortened(path, 6) == "…7.png"
    assert shortened(path, 10, whole_path=True) == path["path"]
