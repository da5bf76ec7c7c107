"""The recipe schema: defaults, path resolution, and one-line errors naming the YAML path."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import yaml

from influence_cli.errors import RecipeError
from influence_cli.recipe import CheckpointEntry, CheckpointGlob, FactoryData, TensorsData, load_recipe, parse_recipe

MINIMAL = {"model": {"factory": "models.py:build"}, "checkpoints": [{"path": "ckpts/a.pt", "learning_rate": 0.1}],
           "data": {"train": {"format": "tensors", "path": "train.pt"}}}


def _parse(**changes):
    return parse_recipe({**MINIMAL, **changes}, base_dir=Path("/recipes"), source="r.yaml")


def test_defaults():
    r = _parse()
    assert (r.loss, r.layers, r.batch_size, r.device, r.dtype, r.output, r.trust_checkpoints) == (
        "cross_entropy", None, 256, "auto", "float32", "runs/audit", False)
    assert r.checkpoints == [CheckpointEntry(path="ckpts/a.pt", learning_rate=0.1)]
    assert isinstance(r.data.train, TensorsData) and r.data.train.inputs_key == "inputs" and r.data.test is None
    assert r.model.kwargs == {}


def test_learning_rate_defaults_to_auto_and_glob_form():
    r = _parse(checkpoints={"glob": "ckpts/*.pt", "learning_rate": [0.1, 0.05]})
    assert r.checkpoints == CheckpointGlob(glob="ckpts/*.pt", learning_rate=[0.1, 0.05])
    assert _parse(checkpoints=[{"path": "a.pt"}]).checkpoints[0].learning_rate == "auto"
    assert _parse(checkpoints={"glob": "*.pt"}).checkpoints.learning_rate == "auto"


def test_factory_data_and_kwargs():
    r = _parse(data={"train": {"format": "factory", "factory": "data.py:make", "kwargs": {"n": 3}}},
               model={"torchvision": "resnet18", "kwargs": {"num_classes": 10}})
    assert r.data.train == FactoryData(format="factory", factory="data.py:make", kwargs={"n": 3})
    assert (r.model.torchvision, r.model.factory, r.model.kwargs) == ("resnet18", None, {"num_classes": 10})


def test_paths_resolve_against_the_recipe_folder(tmp_path, monkeypatch):
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "recipe.yaml").write_text(yaml.safe_dump(MINIMAL))
    monkeypatch.chdir(tmp_path)
    r = load_recipe("exp/recipe.yaml")
    assert r.base_dir == folder
    assert r.resolve("ckpts/a.pt") == folder / "ckpts" / "a.pt"
    assert r.resolve("/abs/x.pt") == Path("/abs/x.pt")
    assert r.resolve("~/x.pt") == Path.home() / "x.pt"
    assert r.source == "exp/recipe.yaml"


def test_to_dict_is_the_users_recipe():
    d = _parse(layers=["fc"], dtype="float64").to_dict()
    assert "base_dir" not in d and "source" not in d
    assert d["layers"] == ["fc"] and d["dtype"] == "float64"
    assert d["checkpoints"] == [{"path": "ckpts/a.pt", "learning_rate": 0.1}]


def test_recipe_is_frozen():
    with pytest.raises(pydantic.ValidationError):
        _parse().batch_size = 3


@pytest.mark.parametrize("changes, message", [
    ({"batchsize": 3}, "r.yaml: batchsize: unknown key"),
    ({"checkpoints": [{"path": "a.pt", "lr": 1}]}, "r.yaml: checkpoints[0].lr: unknown key"),
    ({"checkpoints": [{"path": "a.pt", "learning_rate": "fast"}]},
     "r.yaml: checkpoints[0].learning_rate: Input should be a valid number"),
    ({"checkpoints": {"glob": "*.pt", "learning_rate": [1, "a"]}},
     "r.yaml: checkpoints.learning_rate[1]: Input should be a valid number"),
    ({"checkpoints": [{"path": "a.pt", "learning_rate": -0.1}]},
     "r.yaml: checkpoints[0].learning_rate: Input should be greater than or equal to 0"),
    ({"checkpoints": {"glob": "*.pt", "learning_rate": [0.1, -1]}},
     "r.yaml: checkpoints.learning_rate[1]: Input should be greater than or equal to 0"),
    ({"data": {"train": {"format": "tensors"}}}, "r.yaml: data.train.path: Field required"),
    ({"batch_size": 0}, "r.yaml: batch_size: Input should be greater than 0"),
    ({"output": ["a"]}, "r.yaml: output: Input should be a valid string"),
    ({"device": "cuda:x"}, "r.yaml: device: must be auto, cpu, cuda, cuda:N or mps, not 'cuda:x'"),
    ({"layers": "fc"}, "r.yaml: layers: Input should be a valid list"),
    ({"trust_checkpoints": "maybe"}, "r.yaml: trust_checkpoints: Input should be a valid boolean, unable to "
                                     "interpret input"),
])
def test_one_line_errors_name_the_yaml_path(changes, message):
    with pytest.raises(RecipeError) as info:
        _parse(**changes)
    assert info.value.message == message
    assert info.value.exit_code == 2


def test_model_needs_exactly_one_source():
    with pytest.raises(RecipeError, match=r"^r\.yaml: model: give exactly one of `factory`, `torchvision`"):
        _parse(model={"factory": "a.py:b", "torchvision": "resnet18"})
    with pytest.raises(RecipeError, match=r"^r\.yaml: model: give exactly one of"):
        _parse(model={"kwargs": {}})


def test_malformed_yaml_names_line_and_column(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model:\n  factory: [a\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.message.startswith(f"{path}:3:1: malformed YAML: ")


def test_not_a_mapping_and_missing_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("just a string\n")
    with pytest.raises(RecipeError, match=r": the recipe must be a mapping of keys, got str$"):
        load_recipe(path)
    with pytest.raises(RecipeError, match=r"nope\.yaml: recipe file not found$"):
        load_recipe(tmp_path / "nope.yaml")
