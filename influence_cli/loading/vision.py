"""Image data: ``format: imagefolder`` and ``format: torchvision``, with a recipe ``transform:`` list.

A transform step is a name, or a one-key mapping from a name to its argument: a mapping gives
keyword arguments, anything else the single positional argument::

    transform: [{resize: [32, 32]}, {center_crop: 28}, to_tensor, {normalize: {mean: [0.5], std: [0.5]}}]

Names are ``torchvision.transforms.v2`` classes in snake_case or CamelCase; ``to_tensor`` is
``ToImage`` then ``ToDtype(float32, scale=True)`` (values in [0, 1]). Only deterministic steps
are allowed: a random augmentation would give every gradient pass a different input, so the
scores would not describe the training examples.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from influence_cli.errors import DataError, RecipeError, first_line
from influence_cli.loading.examples import DatasetExamples
from influence_cli.recipe import ImageFolderData, Recipe, TorchvisionData, TransformStep

DETERMINISTIC = {"resize": "Resize", "center_crop": "CenterCrop", "normalize": "Normalize", "grayscale": "Grayscale",
                 "rgb": "RGB", "pad": "Pad", "to_image": "ToImage", "pil_to_tensor": "PILToTensor",
                 "to_pure_tensor": "ToPureTensor", "identity": "Identity"}
DEFAULT_TRANSFORM: list[TransformStep] = ["to_tensor"]


def _step(step: TransformStep, key: str) -> list[Callable[[Any], Any]]:
    """The v2 transform(s) of one recipe step; ``key`` (``data.train.transform[i]``) names it in errors."""
    from torchvision.transforms import v2

    if isinstance(step, str):
        name, arg = step, None
    elif isinstance(step, dict) and len(step) == 1:
        name, arg = next(iter(step.items()))
    else:
        raise RecipeError(f"{key}: a step is a name or a one-key mapping {{name: argument}}, got {step!r}")
    if name in ("to_tensor", "ToTensor"):
        return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    cls_name = DETERMINISTIC.get(name, name)
    if cls_name not in DETERMINISTIC.values():
        raise RecipeError(f"{key}: {name!r} is not an allowed transform (deterministic steps only: to_tensor, "
                          f"{', '.join(DETERMINISTIC)})")
    cls = getattr(v2, cls_name)
    try:
        if isinstance(arg, dict) and isinstance(arg.get("interpolation"), str):
            arg = {**arg, "interpolation": v2.InterpolationMode(arg["interpolation"])}
        return [cls() if arg is None else cls(**arg) if isinstance(arg, dict) else cls(arg)]
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"{key}: {name}: {exc}") from None


def build_transform(steps: list[TransformStep] | None, key: str) -> Callable[[Any], Any]:
    """The ``v2.Compose`` of the recipe's steps (default ``[to_tensor]``); ``key`` names the list."""
    from torchvision.transforms import v2

    steps = DEFAULT_TRANSFORM if steps is None else steps
    return v2.Compose([t for i, s in enumerate(steps) for t in _step(s, f"{key}[{i}]")])


def _examples(dataset: Dataset, key: str) -> DatasetExamples:
    """Examples over a torchvision dataset; its ``targets`` give the labels without decoding images."""
    targets = getattr(dataset, "targets", None)
    labels = None if targets is None else torch.as_tensor(targets, dtype=torch.long)
    return DatasetExamples(dataset, name=key, _labels=labels)


def _train_classes(recipe: Recipe) -> list[str] | None:
    """The training split's class folders when it is an image folder (test classes must match)."""
    from torchvision.datasets.folder import find_classes

    spec = recipe.data.train
    if not isinstance(spec, ImageFolderData):
        return None
    try:
        return find_classes(str(recipe.resolve(spec.root)))[0]
    except (FileNotFoundError, OSError) as exc:
        raise DataError(f"data.train.root: {exc}") from None


def load_imagefolder(spec: ImageFolderData, recipe: Recipe, key: str) -> DatasetExamples:
    """``root/<class>/<file>`` images; class ids by sorted folder name of the *training* root, so
    that a test folder with fewer classes keeps the training numbering."""
    from torchvision.datasets import DatasetFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader

    root = recipe.resolve(spec.root)
    if not root.is_dir():
        raise DataError(f"{key}.root: not a folder: {root}")
    classes = _train_classes(recipe) if key != "data.train" else None

    class Folder(DatasetFolder):
        def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
            found, mapping = super().find_classes(directory)
            if classes is None:
                return found, mapping
            extra = sorted(set(found) - set(classes))
            if extra:
                raise DataError(f"{key}.root: class folder {extra[0]!r} is not a class of data.train "
                                f"({', '.join(classes)})")
            return classes, {c: i for i, c in enumerate(classes)}

    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in spec.extensions or IMG_EXTENSIONS)
    try:
        dataset = Folder(str(root), loader=default_loader, extensions=exts,
                         transform=build_transform(spec.transform, f"{key}.transform"), allow_empty=classes is not None)
    except FileNotFoundError as exc:
        raise DataError(f"{key}.root: {first_line(exc)}") from None
    return _examples(dataset, key)


def load_torchvision_dataset(spec: TorchvisionData, recipe: Recipe, key: str) -> DatasetExamples:
    """``torchvision.datasets.<name>(root, transform=..., **kwargs)`` from local files only."""
    import torchvision.datasets as tvd
    from torchvision.datasets import VisionDataset

    if spec.kwargs.get("download"):
        raise RecipeError(f"{key}.kwargs.download: downloading is refused (no network at run time); "
                          f"put the dataset's files under {key}.root")
    cls = getattr(tvd, spec.name, None)
    if not (isinstance(cls, type) and issubclass(cls, VisionDataset)):
        raise RecipeError(f"{key}.name: {spec.name!r} is not a torchvision.datasets class")
    kwargs = dict(spec.kwargs, transform=build_transform(spec.transform, f"{key}.transform"))
    if spec.root is not None:
        kwargs["root"] = str(recipe.resolve(spec.root))
    try:
        dataset = cls(**kwargs)
    except TypeError as exc:
        raise RecipeError(f"{key}.kwargs: {exc}") from None
    except (RuntimeError, OSError, ValueError) as exc:
        raise DataError(f"{key}: torchvision.datasets.{spec.name} cannot load from "
                        f"{kwargs.get('root', '(no root)')}: {first_line(exc)}") from None
    return _examples(dataset, key)
