"""Data splits as indexable example sets.

An :class:`Examples` holds N examples and hands out batches by index: ``batch(idx)`` returns
``(inputs, labels)`` where ``inputs`` is a tensor or a dict of tensors (e.g. token ids and an
attention mask) with a leading batch dimension. ``describe(i)`` gives reports a short text for
example ``i`` (its text, its image path) under the JSON key ``describe_key``, or ``None``.

Formats beyond ``tensors`` and ``factory`` live in their own modules, imported only when used:
``jsonl``/``csv`` in :mod:`influence_cli.loading.transformers`, ``imagefolder``/``torchvision`` in
:mod:`influence_cli.loading.vision`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch.utils.data import Dataset, default_collate

from influence_cli.errors import DataError, first_line
from influence_cli.loading.checkpoints import torch_load_failure
from influence_cli.loading.imports import import_callable
from influence_cli.recipe import FactoryData, ImageFolderData, Recipe, TensorsData, TextData, TorchvisionData

Inputs = torch.Tensor | dict[str, torch.Tensor]


class Examples:
    """N examples with labels, batched by index. Subclasses implement ``__len__`` and ``_fetch``."""

    name: str
    describe_key: str = "description"
    labeled: bool = True  # False: a test split without labels (its ``labels`` are all -1)

    def __len__(self) -> int:
        raise NotImplementedError

    def describe(self, i: int) -> str | None:
        """A short human-readable description of example ``i`` for reports, or ``None``."""
        return None

    def description(self, i: int) -> dict[str, str]:
        """``{describe_key: describe(i)}`` for a report entry; ``{}`` when there is nothing to show."""
        text = self.describe(i)
        return {} if text is None else {self.describe_key: text}

    def _fetch(self, idx: torch.Tensor) -> tuple[Inputs, torch.Tensor]:
        raise NotImplementedError

    @property
    def labels(self) -> torch.Tensor:
        """All N labels (one pass over the data for a dataset; cached)."""
        raise NotImplementedError

    def batch(self, idx: torch.Tensor) -> tuple[Inputs, torch.Tensor]:
        """Inputs and labels of the examples at ``idx``."""
        return self._fetch(idx)

    def batches(self, batch_size: int, indices: torch.Tensor | None = None
                ) -> Iterator[tuple[torch.Tensor, Inputs, torch.Tensor]]:
        """``(idx, inputs, labels)`` in order over ``indices`` (default: all examples)."""
        indices = torch.arange(len(self)) if indices is None else indices
        for start in range(0, len(indices), batch_size):
            idx = indices[start:start + batch_size]
            yield (idx, *self._fetch(idx))


@dataclass
class TensorExamples(Examples):
    """Examples held as tensors: ``inputs`` (or a dict of them) and ``labels``, first dim N."""

    inputs: Inputs
    labels_: torch.Tensor
    name: str = "data"
    labeled: bool = True

    def __post_init__(self) -> None:
        lengths = {k: len(v) for k, v in _as_dict(self.inputs).items()}
        if any(n != len(self.labels_) for n in lengths.values()):
            raise DataError(f"{self.name}: inputs have {sorted(set(lengths.values()))} rows but "
                            f"labels have {len(self.labels_)}")

    def __len__(self) -> int:
        return len(self.labels_)

    @property
    def labels(self) -> torch.Tensor:
        return self.labels_

    def _fetch(self, idx: torch.Tensor) -> tuple[Inputs, torch.Tensor]:
        if isinstance(self.inputs, dict):
            return {k: v[idx] for k, v in self.inputs.items()}, self.labels_[idx]
        return self.inputs[idx], self.labels_[idx]


@dataclass
class DatasetExamples(Examples):
    """Examples from a map-style ``Dataset`` of ``(input, label)`` pairs, batched by ``collate``."""

    dataset: Dataset
    collate: Callable[[list[Any]], Any] = default_collate
    name: str = "data"
    _labels: torch.Tensor | None = field(default=None, repr=False)
    describe_key = "path"

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def describe(self, i: int) -> str | None:
        """The file of example ``i`` when the dataset lists ``samples`` as (path, label) pairs
        (torchvision ``ImageFolder``/``DatasetFolder``)."""
        samples = getattr(self.dataset, "samples", None)
        if isinstance(samples, list) and i < len(samples) and isinstance(samples[i], tuple):
            return str(samples[i][0])
        return None

    @property
    def labels(self) -> torch.Tensor:
        if self._labels is None:
            self._labels = torch.cat([y for _, _, y in self.batches(256)])
        return self._labels

    def _fetch(self, idx: torch.Tensor) -> tuple[Inputs, torch.Tensor]:
        items = [self.dataset[int(i)] for i in idx]
        try:
            inputs, labels = self.collate(items)
            labels = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise DataError(f"{self.name}: cannot batch the items (each must be an (input, label) pair, inputs of "
                            f"one shape, numeric labels): {first_line(exc)}") from None
        if not _is_inputs(inputs):
            first = items[0][0] if isinstance(items[0], (tuple, list)) else inputs
            raise DataError(f"{self.name}: item inputs must be tensors (or dicts of tensors), got "
                            f"{_type_names(first)}")
        return inputs, labels


def _as_dict(inputs: Inputs) -> dict[str, torch.Tensor]:
    return inputs if isinstance(inputs, dict) else {"inputs": inputs}


def _is_inputs(obj: Any) -> bool:
    """A tensor, or a non-empty dict of tensors (token ids, attention mask)."""
    return isinstance(obj, torch.Tensor) or (isinstance(obj, dict) and bool(obj)
                                              and all(isinstance(v, torch.Tensor) for v in obj.values()))


def _type_names(obj: Any) -> str:
    """What an object is, for an error: ``str``, ``None``, ``tuple (Tensor, str)``."""
    if obj is None:
        return "None"
    if isinstance(obj, tuple):
        names = [type(o).__name__ for o in obj[:4]] + (["..."] if len(obj) > 4 else [])
        return f"tuple ({', '.join(names)})"
    return type(obj).__name__


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
        n = len(next(iter(_as_dict(inputs).values())))
        return TensorExamples(inputs, torch.full((n,), -1, dtype=torch.long), name=key, labeled=False)
    return TensorExamples(inputs, torch.as_tensor(obj[spec.labels_key]), name=key)


def _from_factory(spec: FactoryData, recipe: Recipe, key: str) -> Examples:
    fn = import_callable(spec.factory, base_dir=recipe.base_dir, key=f"{key}.factory")
    try:
        out = fn(**spec.kwargs)
    except Exception as exc:
        raise DataError(f"{key}.factory: {spec.factory} raised {type(exc).__name__}: {exc}") from None
    returned = f"{key}.factory: {spec.factory} returned {_type_names(out)}"
    if isinstance(out, tuple) and len(out) == 2:  # (inputs, labels)
        if not _is_inputs(out[0]):
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
    from influence_cli.loading.transformers import load_text

    return load_text(spec, recipe, key)


def _from_imagefolder(spec: ImageFolderData, recipe: Recipe, key: str) -> Examples:
    from influence_cli.loading.vision import load_imagefolder

    return load_imagefolder(spec, recipe, key)


def _from_torchvision(spec: TorchvisionData, recipe: Recipe, key: str) -> Examples:
    from influence_cli.loading.vision import load_torchvision_dataset

    return load_torchvision_dataset(spec, recipe, key)


LOADERS: dict[type, Callable[[Any, Recipe, str], Examples]] = {
    TensorsData: _from_tensors,
    FactoryData: _from_factory,
    TextData: _from_text,
    ImageFolderData: _from_imagefolder,
    TorchvisionData: _from_torchvision,
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
    return examples
