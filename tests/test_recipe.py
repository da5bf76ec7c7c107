"""The recipe schema: defaults, path resolution, and one-line errors naming the YAML path."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import torch
import yaml
from click.testing import Result
from typer.testing import CliRunner

from conftest import TinyRun
from influence_cli.cli import app
from influence_cli.errors import RecipeError
from influence_cli.loading.models import resolve_device
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
    ({"batchsize": 3}, "r.yaml: batchsize: unknown key (did you mean 'batch_size'?)"),
    ({"checkpoints": [{"path": "a.pt", "lr": 1}]}, "r.yaml: checkpoints[0].lr: unknown key"),
    ({"checkpoints": [{"path": "a.pt", "learning_rate": "fast"}]},
     "r.yaml: checkpoints[0].learning_rate: expected a number or 'auto', got 'fast'"),
    ({"checkpoints": {"glob": "*.pt", "learning_rate": [1, "a"]}},
     "r.yaml: checkpoints.learning_rate[1]: expected a number, got 'a'"),
    ({"checkpoints": [{"path": "a.pt", "learning_rate": -0.1}]},
     "r.yaml: checkpoints[0].learning_rate: must be greater than or equal to 0, got -0.1"),
    ({"checkpoints": {"glob": "*.pt", "learning_rate": [0.1, -1]}},
     "r.yaml: checkpoints.learning_rate[1]: must be greater than or equal to 0, got -1"),
    ({"checkpoints": [{"path": "a.pt", "learning_rate": float("inf")}]},
     "r.yaml: checkpoints[0].learning_rate: expected a finite number or 'auto', got inf"),
    ({"checkpoints": [{"path": "a.pt", "learning_rate": True}]},
     "r.yaml: checkpoints[0].learning_rate: expected a number or 'auto', got true"),
    ({"checkpoints": []}, "r.yaml: checkpoints: needs at least one checkpoint"),
    ({"checkpoints": 3}, "r.yaml: checkpoints: expected a list of checkpoints or a mapping with `glob` or "
                         "`hf_trainer_dir`, got 3"),
    ({"checkpoints": {}}, "r.yaml: checkpoints.glob: required key is missing"),
    ({"checkpoints": {"glob": 1}}, "r.yaml: checkpoints.glob: expected a string, got 1"),
    ({"checkpoints": {"hf_trainer_dir": "out", "glob": "*.pt"}}, "r.yaml: checkpoints.glob: unknown key"),
    ({"data": {"train": {"format": "tensors"}}}, "r.yaml: data.train.path: required key is missing"),
    ({"data": {"train": {"path": "t.pt"}}}, "r.yaml: data.train.format: required key is missing"),
    ({"data": {"train": {"format": "tensor", "path": "t.pt"}}},
     "r.yaml: data.train.format: unknown format 'tensor' (expected one of: tensors, factory, jsonl, csv, "
     "imagefolder, torchvision)"),
    ({"model": None}, "r.yaml: model: expected a mapping of keys, got null"),
    ({"batch_size": "many"}, "r.yaml: batch_size: expected an integer, got 'many'"),
    ({"batch_size": 0}, "r.yaml: batch_size: must be greater than 0, got 0"),
    ({"output": ["a"]}, "r.yaml: output: expected a string, got a list"),
    ({"device": "cuda:x"}, "r.yaml: device: must be auto, cpu, cuda or cuda:N, not 'cuda:x'"),
    ({"device": "mps"}, "r.yaml: device: must be auto, cpu, cuda or cuda:N, not 'mps'"),
    ({"dtype": "float16"}, "r.yaml: dtype: expected one of 'float32', 'float64', 'bfloat16', got 'float16'"),
    ({"model": {"factory": "a.py:b", "task": "tagging"}},
     "r.yaml: model.task: expected one of 'sequence-classification', 'causal-lm', got 'tagging'"),
    ({"model": {"torchvision": "resnet18", "task": "sequence-classification"}},
     "r.yaml: model.task: applies to `transformers` models only"),
    ({"layers": "fc"}, "r.yaml: layers: expected a list, got 'fc'"),
    ({"trust_checkpoints": "maybe"}, "r.yaml: trust_checkpoints: expected true or false, got 'maybe'"),
    ({"projection": {"dim": 8, "sed": 1}}, "r.yaml: projection.sed: unknown key (did you mean 'seed'?)"),
])
def test_one_line_errors_name_the_yaml_path(changes, message):
    with pytest.raises(RecipeError) as info:
        _parse(**changes)
    assert info.value.message == message
    assert info.value.exit_code == 2


def test_task_is_recorded_for_transformers_models_only():
    """The recipe echo (run.json, reports) shows a transformers head, and no head for other models."""
    assert "task" not in _parse(model={"torchvision": "resnet18"}).to_dict()["model"]
    assert _parse(model={"factory": "m.py:f"}).model.task is None
    assert _parse(model={"transformers": "m"}).to_dict()["model"]["task"] == "sequence-classification"


@pytest.mark.parametrize("written, indices", [
    ("0:5", [0, 1, 2, 3, 4]), ("0,3,7", [0, 3, 7]), ("0:2, 9", [0, 1, 9]), (":3", [0, 1, 2]), (7, [7]),
    ([4, 2], [4, 2]),
])
@pytest.mark.parametrize("key", ["test_indices", "candidates"])
def test_attack_rule_indices_take_the_test_indices_syntax(key, written, indices):
    r = _parse(checks={"no_attack_target": {key: written}})
    assert getattr(r.checks.no_attack_target, key) == indices
    assert r.to_dict()["checks"]["no_attack_target"][key] == indices  # recorded as a list


@pytest.mark.parametrize("written, words", [
    ("0:x", "cannot read '0:x'; use '0,3,7', '0:100' (end exclusive) or a mix ('0:10,15')"),
    ("3:3", "selects no test example"), ([], "selects no test example"),
    ("-2:1", "must be greater than or equal to 0, got -2"), (True, "expected a list, got true"),
])
def test_bad_attack_rule_indices_name_the_key(written, words):
    with pytest.raises(RecipeError) as info:
        _parse(checks={"no_attack_target": {"candidates": written}})
    assert info.value.message == f"r.yaml: checks.no_attack_target.candidates: {words}"


def test_unquoted_ranges_are_strings_not_base_60_numbers(tmp_path):
    """YAML 1.1 reads `10:20` as 620; a recipe reads it as the range it looks like (YAML 1.2)."""
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(MINIMAL) + "checks:\n  no_attack_target: {test_indices: 10:12, candidates: 0:3}\n"
                    "batch_size: 12\n")
    rule = load_recipe(path).checks.no_attack_target
    assert (rule.test_indices, rule.candidates) == ([10, 11], [0, 1, 2])
    assert load_recipe(path).batch_size == 12


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
    path.write_text("# nothing yet\n")
    with pytest.raises(RecipeError, match=r"r\.yaml: the recipe is empty$"):
        load_recipe(path)
    with pytest.raises(RecipeError, match=r": is a folder, not a recipe file$"):
        load_recipe(tmp_path)
    with pytest.raises(RecipeError, match=r"nope\.yaml: recipe file not found$"):
        load_recipe(tmp_path / "nope.yaml")


@pytest.mark.parametrize("text, message", [
    ("a: 1\nb: 2\na: 3\n", "{path}:3: duplicate key 'a' (first at line 1)"),
    ("m:\n  k: {x: 1, y: 2, x: 3}\n", "{path}:2: duplicate key 'x' (first at line 2)"),
    ("l:\n- {p: 1}\n- p: 2\n  q: 3\n  p: 4\n", "{path}:5: duplicate key 'p' (first at line 3)"),
    ("[" * 1000, "{path}:1: nested too deeply (more than 100 levels of lists and mappings)"),
    ("a:\n" + "".join("  " * i + "- x:\n" for i in range(1, 120)),
     "{path}:51: nested too deeply (more than 100 levels of lists and mappings)"),
    ("a: &x {b: [1, *x]}\n", "{path}:1: alias *x is used inside &x itself (a list or mapping cannot contain itself)"),
])
def test_yaml_refusals_name_the_line(tmp_path, text, message):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.message == message.format(path=path)


def test_merge_keys_and_repeated_aliases_are_not_duplicates(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: {factory: models.py:build}\n"
                    "checkpoints:\n- &c {path: a.pt, learning_rate: 0.1}\n- <<: *c\n  path: b.pt\n"
                    "data: {train: {format: tensors, path: train.pt}}\nlayers: [&l fc, *l]\n")
    r = load_recipe(path)
    assert r.checkpoints == [CheckpointEntry(path="a.pt", learning_rate=0.1),
                             CheckpointEntry(path="b.pt", learning_rate=0.1)]
    assert r.layers == ["fc", "fc"]


def test_deep_but_bounded_nesting_loads(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "model": {**MINIMAL["model"], "kwargs": {"a": [[[[[]]]]] * 2}}}))
    assert load_recipe(path).model.kwargs == {"a": [[[[[]]]]] * 2}


def test_a_non_utf8_recipe_names_the_byte(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(b"# caf\xe9\n" + yaml.safe_dump(MINIMAL).encode())
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.message == f"{path}: not UTF-8 text (byte 0xe9 at offset 5)"
    path.write_bytes(b"\xef\xbb\xbf" + yaml.safe_dump(MINIMAL).encode())  # a UTF-8 byte-order mark is fine
    assert load_recipe(path).batch_size == 256


def test_an_unknown_key_is_reported_before_a_missing_one():
    with pytest.raises(RecipeError) as info:  # `path` is missing because of the typo: name the typo
        _parse(checkpoints=[{"pth": "a.pt"}])
    assert info.value.message == "r.yaml: checkpoints[0].pth: unknown key (did you mean 'path'?)"
    with pytest.raises(RecipeError) as info:  # at equal depth, in another section too
        _parse(data={"train": {"format": "tensors"}, "test": {"format": "tensors", "pth": "t.pt"}})
    assert info.value.message == "r.yaml: data.test.pth: unknown key (did you mean 'path'?)"


def test_a_missing_gpu_number_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(RecipeError) as info:
        resolve_device("cuda:2")
    assert info.value.message == "device: cuda:2 requested but this machine has 2 CUDA device(s) (cuda:0 is the first)"


# A recipe for the tiny run of conftest.py, line by line: the cases below change it.
TEXT = """\
model: {{factory: "{factory}"}}
checkpoints:
- {{path: epoch1.pt, learning_rate: 0.5}}
- {{path: epoch2.pt, learning_rate: 0.125}}
data:
  train: {{format: tensors, path: train.pt}}
  test: {{format: tensors, path: test.pt}}
batch_size: 4
device: cpu
dtype: float64
"""

# id -> (the recipe's bytes from TEXT, expected message; {recipe} = the recipe file)
CLI_CASES = {
    "duplicate-section": (lambda t: t + "checkpoints:\n- {path: epoch2.pt, learning_rate: 0.1}\n",
                          "{recipe}:11: duplicate key 'checkpoints' (first at line 2)"),
    "duplicate-key": (lambda t: t + "batch_size: 2\n", "{recipe}:11: duplicate key 'batch_size' (first at line 8)"),
    "duplicate-nested-key": (lambda t: t.replace("path: test.pt}", "path: test.pt, path: train.pt}"),
                             "{recipe}:7: duplicate key 'path' (first at line 7)"),
    "not-utf8": (lambda t: b"# caf\xe9\n" + t.encode(), "{recipe}: not UTF-8 text (byte 0xe9 at offset 5)"),
    "too-deep": (lambda t: "[" * 20000, "{recipe}:1: nested too deeply (more than 100 levels of lists and mappings)"),
    "recursive-alias": (lambda t: t + "layers: &l [*l]\n",
                        "{recipe}:11: alias *l is used inside &l itself (a list or mapping cannot contain itself)"),
    "mps": (lambda t: t.replace("device: cpu", "device: mps"),
            "{recipe}: device: must be auto, cpu, cuda or cuda:N, not 'mps'"),
    "path-typo": (lambda t: t.replace("{path: epoch1", "{pth: epoch1"),
                  "{recipe}: checkpoints[0].pth: unknown key (did you mean 'path'?)"),
    "wrong-type": (lambda t: t.replace("batch_size: 4", "batch_size: many"),
                   "{recipe}: batch_size: expected an integer, got 'many'"),
    "no-checkpoints": (lambda t: t.replace("checkpoints:\n- {path: epoch1.pt, learning_rate: 0.5}\n"
                                           "- {path: epoch2.pt, learning_rate: 0.125}\n", "checkpoints: []\n"),
                       "{recipe}: checkpoints: needs at least one checkpoint"),
}


def _score(run: TinyRun) -> Result:
    return CliRunner().invoke(app, ["score", str(run.recipe_path), "-q", "--out", str(run.dir / "report")])


def test_the_recipe_text_of_the_cases_scores(tiny_recipe):
    run = tiny_recipe("mlp", n_train=5, n_test=2)
    run.recipe_path.write_text(TEXT.format(factory=run.data["model"]["factory"]))
    assert _score(run).exit_code == 0


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_broken_recipe_gives_one_line_and_exit_2(tiny_recipe, case):
    change, message = CLI_CASES[case]
    run = tiny_recipe("mlp", n_train=5, n_test=2)
    text = change(TEXT.format(factory=run.data["model"]["factory"]))
    raw = text if isinstance(text, bytes) else text.encode()
    run.recipe_path.write_bytes(raw)
    res = _score(run)
    assert (res.exit_code, res.stderr, res.stdout) == (2, f"error: {message.format(recipe=run.recipe_path)}\n", "")
    assert run.recipe_path.read_bytes() == raw and not (run.dir / "report").exists()
