"""Parameter selection (`layers:`) and the grouping of parameters into layers (owning modules)."""

from __future__ import annotations

import pytest
from fixtures.tiny_models import build_bert, build_cnn, build_mlp
from torch import nn

from influence_cli.errors import RecipeError
from influence_cli.gradients.layers import select_parameters


def test_all_trainable_parameters_grouped_by_owning_module():
    layout = select_parameters(build_cnn(), None)
    assert layout.names == ("conv.weight", "conv.bias", "bn.weight", "bn.bias", "fc.weight", "fc.bias")
    assert layout.sizes == (36, 4, 4, 4, 48, 3)
    assert layout.layer_names == ("conv", "bn", "fc")
    assert layout.slices == ((0, 40), (40, 48), (48, 99)) and layout.dim == 99


def test_globs_modules_and_parameter_names():
    layout = select_parameters(build_bert(), ["*.embeddings.LayerNorm", "classifier.bias"])
    assert layout.names == ("bert.embeddings.LayerNorm.weight", "bert.embeddings.LayerNorm.bias", "classifier.bias")
    assert layout.layer_names == ("bert.embeddings.LayerNorm", "classifier")
    assert layout.slices == ((0, 16), (16, 19))  # hidden size 8: weight + bias; 3 classes
    # a module name selects everything inside it; order follows the model, not the patterns
    layout = select_parameters(build_mlp(), ["4", "0.bias"])
    assert layout.names == ("0.bias", "4.weight", "4.bias") and layout.layer_names == ("0", "4")


def test_frozen_parameters_are_not_selected():
    model = build_mlp()
    model[0].weight.requires_grad_(False)
    assert select_parameters(model, None).names == ("0.bias", "2.weight", "2.bias", "4.weight", "4.bias")
    with pytest.raises(RecipeError, match=r"^layers: '0\.weight' matches no trainable module or parameter"):
        select_parameters(model, ["0.weight"])


def test_no_trainable_parameters():
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(RecipeError, match=r"^layers: the model has no trainable parameters to differentiate$"):
        select_parameters(model, None)


def test_a_model_that_is_one_layer_is_one_layer() -> None:
    layout = select_parameters(nn.Linear(4, 3), None)
    assert layout.names == ("weight", "bias")
    assert layout.layer_names == ("",) and layout.slices == ((0, 15),)
