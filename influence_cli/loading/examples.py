"""Data splits as indexable example sets (the types every data format produces).

An :class:`Examples` holds N examples and hands out batches by index: ``batch(idx)`` returns
``(inputs, labels)`` where ``inputs`` is a tensor or a dict of tensors (e.g. token ids and an
attention mask) with a leading batch dimension.

How reports show an example (one place for every writer): ``classes`` names the class ids when
the data knows them (image folders, a transformers config's ``id2label``, torchvision's
``classes``, the recipe's ``data.labels``); :meth:`Examples.label_fields` puts a label in a report
entry as ``{key: id, key_name: name}``; ``describe(i)`` gives example ``i``'s text or image path,
put under the JSON key ``describe_key`` by :meth:`Examples.description`. The functions at the end
(:func:`label_text`, :func:`described`, :func:`shortened`) show such entries to a person.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import torch
from torch.utils.data import Dataset, default_collate

from influence_cli.errors import DataError, first_line

Inputs = torch.Tensor | dict[str, torch.Tensor]
#: The keys :meth:`Examples.description` may add to a report entry (a text, an image file, other).
DESCRIPTION_KEYS = ("text", "path", "description")
DESCRIBE_CHARS = 200  # longest text a JSON report carries per example


class Examples:
    """N examples with labels, batched by index. Subclasses implement ``__len__`` and ``_fetch``."""

    name: str
    describe_key: str = "description"
    labeled: bool = True  # False: a test split without labels (its ``labels`` are all -1)
    classes: list[str] | None = None  # class names by id, when the data names its classes

    def __len__(self) -> int:
        raise NotImplementedError

    def describe(self, i: int, limit: int | None = DESCRIBE_CHARS) -> str | None:
        """A human-readable description of example ``i`` for reports (its text, its file), or ``None``;
        a text longer than ``limit`` characters is shortened."""
        return None

    def class_name(self, label: Any) -> str | None:
        """The name of class ``label`` (an integer id), or ``None`` when it has none."""
        if self.classes is None or isinstance(label, bool) or not isinstance(label, int):
            return None
        return self.classes[label] if 0 <= label < len(self.classes) else None

    def label_fields(self, key: str, label: Any) -> dict[str, Any]:
        """``{key: label}`` for a report entry, and ``{key + "_name": name}`` beside it when this split
        names its classes (``None`` for a label without a name)."""
        return {key: label} if self.classes is None else {key: label, f"{key}_name": self.class_name(label)}

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
    classes: list[str] | None = None

    def __post_init__(self) -> None:
        lengths = {k: len(v) for k, v in as_dict(self.inputs).items()}
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
    classes: list[str] | None = None
    describe_key = "path"

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        names = getattr(self.dataset, "classes", None)  # torchvision datasets, ImageFolder, a user's Dataset
        if self.classes is None and isinstance(names, (list, tuple)) and all(isinstance(c, str) for c in names):
            self.classes = list(names)

    def describe(self, i: int, limit: int | None = DESCRIBE_CHARS) -> str | None:
        """The file of example ``i`` (never shortened) when the dataset lists ``samples`` as (path,
        label) pairs (torchvision ``ImageFolder``/``DatasetFolder``)."""
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
        if not is_inputs(inputs):
            first = items[0][0] if isinstance(items[0], (tuple, list)) else inputs
            raise DataError(f"{self.name}: item inputs must be tensors (or dicts of tensors), got "
                            f"{type_names(first)}")
        return inputs, labels


def shorten(text: str, chars: int) -> str:
    """``text`` cut to at most ``chars`` characters, ending in ``…`` when cut."""
    return text if len(text) <= chars else text[:chars - 1] + "…"


def label_text(entry: Mapping[str, Any], key: str) -> Any:
    """Label ``key`` of a report entry as a person reads it: ``name (id)`` when the entry names the
    class (``key_name``), else the id as it is."""
    name = entry.get(f"{key}_name")
    return entry.get(key) if name is None else f"{name} ({entry.get(key)})"


def described(entry: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(key, text)`` of a report entry's description (its text, its file path), if it has one."""
    key = next((k for k in DESCRIPTION_KEYS if entry.get(k) is not None), None)
    return None if key is None else (key, str(entry[key]))


def shortened(entry: Mapping[str, Any], chars: int, whole_path: bool = False) -> str | None:
    """A report entry's description in at most ``chars`` characters: a text keeps its start, a file
    path its end (``…/cat/012.png``), or all of it with ``whole_path`` (to open the file); ``None``
    without a description."""
    found = described(entry)
    if found is None:
        return None
    key, text = found
    if key != "path":
        return shorten(text, chars)
    if whole_path or len(text) <= chars:
        return text
    parts = text.replace("\\", "/").split("/")
    tail = parts[-1]
    for part in reversed(parts[:-1]):  # whole folder names, as many as fit
        if len(part) + len(tail) + 3 > chars:
            break
        tail = f"{part}/{tail}"
    return "…/" + tail if len(tail) + 2 <= chars else "…" + text[len(text) - chars + 1:]


def as_dict(inputs: Inputs) -> dict[str, torch.Tensor]:
    return inputs if isinstance(inputs, dict) else {"inputs": inputs}


def is_inputs(obj: Any) -> bool:
    """A tensor, or a non-empty dict of tensors (token ids, attention mask)."""
    return isinstance(obj, torch.Tensor) or (isinstance(obj, dict) and bool(obj)
                                              and all(isinstance(v, torch.Tensor) for v in obj.values()))


def type_names(obj: Any) -> str:
    """What an object is, for an error: ``str``, ``None``, ``tuple (Tensor, str)``."""
    if obj is None:
        return "None"
    if isinstance(obj, tuple):
        names = [type(o).__name__ for o in obj[:4]] + (["..."] if len(obj) > 4 else [])
        return f"tuple ({', '.join(names)})"
    return type(obj).__name__
