"""Loading a recipe's data split: one loader per ``format`` (:data:`LOADERS`), each returning
:class:`~influence_cli.loading.examples.Examples`.

``tensors`` and ``factory`` are read here; ``jsonl``/``csv`` in :mod:`influence_cli.loading.transformers`
(:mod:`influence_cli.loading.causal_lm` for a causal-lm model),
``imagefolder``/``torchvision`` in :mod:`influence_cli.loading.vision` (those modules import
transformers and torchvision only when a split of theirs is loaded). The recipe's ``data.labels``,
when set, names the classes of both splits (over any names the data carries).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from influence_cli.errors import DataError, RecipeError
from influence_cli.loading.causal_lm import load_causal_text
from influence_cli.loading.checkpoints import torch_load_failure
from influence_cli.loading.examples import (
    DatasetExamples,
    Examples,
    TensorExamples,
    as_dict,
    is_inputs,
    type_names,
)
from influence_cli.loading.imports import import_callable
from influence_cli.loading.transformers import load_text
from influence_cli.loading.vision import load_imagefolder, load_torchvision_dataset
from influence_cli.recipe import (
    FactoryData,
    ImageFolderData,
    Recipe,
    TensorsData,
    TextData,
    TorchvisionData,
)


def _load_tensor_file(path: Path, key: str) -> Mapping[str, Any]:
    if not path.is_file():
        raise DataError(f"{key}.path: file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = torch_load_failure(path, exc, what="PyTorch tensor file",
                                    pickle_hint="save only tensors (a dict of tensors) or a .safetensors file")
        raise DataError(f"{key}.path: cannot read {path}: {reason}") from None
    if not isinstance(obj, Mapping):
        raise DataError(f"{key}.path: {path} holds a {type(obj).__name__}, expected a dict with inputs and labels")
    return obj


def _from_tensors(spec: TensorsData, recipe: Recipe, key: str) -> Examples:
    path = recipe.resolve(spec.path)
    obj = _load_tensor_file(path, key)
    # A test split may come without labels: it is then explained at the model's predictions.
    required = (spec.inputs_key,) if key == "data.test" else (spec.inputs_key, spec.labels_key)
    for k in required:
        if k not in obj:
            raise DataError(f"{key}: {path} has no {k!r} entry (has: {', '.join(map(str, obj)) or 'nothing'})")
    inputs = obj[spec.inputs_key]
    if spec.labels_key not in obj:
        n = len(next(iter(as_dict(inputs).values())))
        return TensorExamples(inputs, torch.full((n,), -1, dtype=torch.long), name=key, labeled=False)
    return TensorExamples(inputs, torch.as_tensor(obj[spec.labels_key]), name=key)


def _from_factory(spec: FactoryData, recipe: Recipe, key: str) -> Examples:
    fn = import_callable(spec.factory, base_dir=recipe.base_dir, key=f"{key}.factory")
    try:
        out = fn(**spec.kwargs)
    except Exception as exc:
        raise DataError(f"{key}.factory: {spec.factory} raised {type(exc).__name__}: {exc}") from None
    returned = f"{key}.factory: {spec.factory} returned {type_names(out)}"
    if isinstance(out, tuple) and len(out) == 2:  # (inputs, labels)
        if not is_inputs(out[0]):
            raise DataError(f"{returned}; the inputs must be a tensor or a dict of tensors")
        try:
            labels = torch.as_tensor(out[1])
        except (TypeError, ValueError, RuntimeError):
            raise DataError(f"{returned}; the labels must be numbers (a tensor of class indices or targets)") from None
        return TensorExamples(out[0], labels, name=key)
    # A map-style dataset: indexable with a length (a str, a dict or a tensor has both but is not one).
    if hasattr(out, "__getitem__") and hasattr(out, "__len__") and not isinstance(out, (str, bytes, Mapping,
                                                                                       torch.Tensor)):
        return DatasetExamples(out, name=key)
    raise DataError(f"{returned}; expected a map-style Dataset of (input, label) pairs or an (inputs, labels) "
                    "tuple of tensors")


def _from_text(spec: TextData, recipe: Recipe, key: str) -> Examples:
    """Text rows: next-token targets for a causal LM, else texts with class labels."""
    return load_causal_text(spec, recipe, key) if recipe.model.task == "causal-lm" else load_text(spec, recipe, key)


LOADERS: dict[type, Callable[[Any, Recipe, str], Examples]] = {
    TensorsData: _from_tensors,
    FactoryData: _from_factory,
    TextData: _from_text,
    ImageFolderData: load_imagefolder,
    TorchvisionData: load_torchvision_dataset,
}


def load_split(recipe: Recipe, split: str) -> Examples:
    """The ``data.<split>`` examples of a recipe; an absent or empty split is an error."""
    spec = getattr(recipe.data, split)
    key = f"data.{split}"
    if spec is None:
        raise DataError(f"{key}: this command needs a {split} split; add it to the recipe")
    examples = LOADERS[type(spec)](spec, recipe, key)
    if len(examples) == 0:
        raise DataError(f"{key}: no examples")
    names = recipe.data.labels
    if names is not None:  # the recipe's class names (its length is checked against the model's outputs)
        twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if twice is not None:
            raise RecipeError(f"data.labels: class name {twice!r} is given twice")
        examples.classes = list(names)
    return examples
