"""Build the model a recipe names (untrained: the checkpoints supply the weights)."""

from __future__ import annotations

import torch
from torch import nn

from influence_cli.errors import RecipeError
from influence_cli.loading.imports import import_callable
from influence_cli.recipe import Recipe


def build_model(recipe: Recipe) -> nn.Module:
    """Instantiate ``recipe.model``. Nothing is downloaded: torchvision models get ``weights=None``,
    transformers models are built from their local config."""
    spec = recipe.model
    if spec.transformers:
        from influence_cli.loading.transformers import build_transformers_model

        model = build_transformers_model(recipe)
    elif spec.factory:
        factory = import_callable(spec.factory, base_dir=recipe.base_dir, key="model.factory")
        try:
            model = factory(**spec.kwargs)
        except Exception as exc:
            raise RecipeError(f"model.factory: {spec.factory} raised {type(exc).__name__}: {exc}") from None
    else:
        import torchvision

        if "weights" in spec.kwargs:
            raise RecipeError("model.kwargs.weights: pretrained weights would need a download; "
                              "the checkpoints supply the weights")
        try:
            model = torchvision.models.get_model(spec.torchvision, weights=None, **spec.kwargs)
        except ValueError:
            raise RecipeError(f"model.torchvision: unknown torchvision model {spec.torchvision!r}") from None
        except TypeError as exc:
            raise RecipeError(f"model.kwargs: {exc}") from None
    if not isinstance(model, nn.Module):
        raise RecipeError(f"model.factory: returned {type(model).__name__}, not a torch.nn.Module")
    return model


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; an unavailable CUDA (or GPU number) is an error,
    not a fallback. ``name`` is one the recipe schema accepts: auto, cpu, cuda or cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError(f"device: {name} requested but CUDA is not available on this machine")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise RecipeError(f"device: {name} requested but this machine has {torch.cuda.device_count()} CUDA "
                          "device(s) (cuda:0 is the first)")
    return device
