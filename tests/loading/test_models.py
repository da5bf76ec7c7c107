"""``build_model``: a model from ``file.py:callable``, ``pkg.module:callable`` or a torchvision name
(never downloaded), one-line errors under ``model.*``; ``resolve_device``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from conftest import TINY_MODELS
from fixtures.tiny_models import build_mlp
from influence_cli.errors import RecipeError
from influence_cli.loading.models import build_model, resolve_device
from influence_cli.recipe import Recipe, parse_recipe


def _recipe(folder: Path, **model: Any) -> Recipe:
    return parse_recipe({"model": model, "checkpoints": [{"path": "c.pt", "learning_rate": 0.1}],
                         "data": {"train": {"format": "tensors", "path": "train.pt"}}}, base_dir=folder)


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _error(folder: Path, **model: Any) -> str:
    with pytest.raises(RecipeError) as info:
        build_model(_recipe(folder, **model))
    return info.value.message


def test_a_file_factory_with_kwargs(tmp_path):
    model = build_model(_recipe(tmp_path, factory=f"{TINY_MODELS}:build_mlp", kwargs={"hidden": 5, "num_classes": 4}))
    assert _shapes(model) == _shapes(build_mlp(hidden=5, num_classes=4))
    assert _shapes(model)["4.weight"] == (4, 5)


def test_a_relative_file_factory(tmp_path):
    (tmp_path / "m.py").write_text("from torch import nn\n\ndef build(width=3):\n    return nn.Linear(2, width)\n")
    model = build_model(_recipe(tmp_path, factory="m.py:build", kwargs={"width": 7}))
    assert isinstance(model, nn.Linear) and (model.in_features, model.out_features) == (2, 7)


def test_a_module_factory(tmp_path):
    model = build_model(_recipe(tmp_path, factory="torch.nn:Conv2d",
                                kwargs={"in_channels": 3, "out_channels": 5, "kernel_size": 2}))
    assert isinstance(model, nn.Conv2d) and tuple(model.weight.shape) == (5, 3, 2, 2)


def test_a_torchvision_model_is_built_without_weights(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    model = build_model(_recipe(tmp_path, torchvision="resnet18", kwargs={"num_classes": 7}))
    want = torchvision.models.resnet18(num_classes=7)
    assert type(model) is type(want) and model.fc.out_features == 7
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in want.parameters())
    assert _shapes(model) == _shapes(want)


def test_torchvision_errors(tmp_path):
    pytest.importorskip("torchvision")
    assert _error(tmp_path, torchvision="resnet18", kwargs={"weights": "DEFAULT"}) == (
        "model.kwargs.weights: pretrained weights would need a download; the checkpoints supply the weights")
    assert _error(tmp_path, torchvision="resnet999") == "model.torchvision: unknown torchvision model 'resnet999'"
    assert _error(tmp_path, torchvision="resnet18", kwargs={"no_such_option": 1}).startswith("model.kwargs: ")


def test_factory_errors(tmp_path):
    (tmp_path / "m.py").write_text("def boom():\n    raise RuntimeError('no GPU here')\n\n"
                                   "def number():\n    return 3\n\n"
                                   "def needs(width):\n    return width\n")
    assert _error(tmp_path, factory="nope.py:build") == f"model.factory: file not found: {tmp_path / 'nope.py'}"
    assert _error(tmp_path, factory="m.py:missing") == "model.factory: 'm.py' has no callable named 'missing'"
    assert _error(tmp_path, factory="m.py:boom") == "model.factory: m.py:boom raised RuntimeError: no GPU here"
    assert _error(tmp_path, factory="m.py:number") == "model.factory: returned int, not a torch.nn.Module"
    assert _error(tmp_path, factory="m.py:needs", kwargs={"width": None}) == (
        "model.factory: returned NoneType, not a torch.nn.Module")
    assert _error(tmp_path, factory="m.py:needs").startswith("model.factory: m.py:needs raised TypeError: ")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        assert resolve_device("cuda:0") == torch.device("cuda:0")
        with pytest.raises(RecipeError) as info:
            resolve_device(f"cuda:{n}")
        assert info.value.message == (f"device: cuda:{n} requested but this machine has {n} CUDA device(s) "
                                      "(cuda:0 is the first)")
    else:
        for name in ("cuda", "cuda:1"):
            with pytest.raises(RecipeError) as info:
                resolve_device(name)
            assert info.value.message == f"device: {name} requested but CUDA is not available on this machine"
