"""The YAML recipe: schema, validation and path resolution.

A recipe names a model, its training checkpoints (with learning rates η_c), the data, the loss
and the layers to differentiate. Every section is a small pydantic model with ``extra="forbid"``
so that a typo is an error naming its YAML path, not a silently ignored key. Relative paths are
relative to the recipe file. The YAML is read with a safe loader that also refuses a key given
twice in one mapping (the last one would silently win) and absurdly deep nesting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from influence_cli.errors import RecipeError
from influence_cli.recipe.messages import one_line
from influence_cli.recipe.schema import (
    CheckpointEntry,
    CheckpointGlob,
    ChecksSpec,
    DataSpec,
    DataSplit,
    FactoryData,
    HFTrainerCheckpoints,
    ImageFolderData,
    ModelSpec,
    NoAttackTargetRule,
    ProjectionSpec,
    Recipe,
    TensorsData,
    TextData,
    TorchvisionData,
    TransformStep,
)
from influence_cli.recipe.strict_yaml import read_yaml

__all__ = ["ChecksSpec", "CheckpointEntry", "CheckpointGlob", "DataSpec", "DataSplit", "FactoryData",
           "HFTrainerCheckpoints", "ImageFolderData", "ModelSpec", "NoAttackTargetRule", "ProjectionSpec", "Recipe",
           "TensorsData", "TextData", "TorchvisionData", "TransformStep", "load_recipe", "parse_recipe"]


def parse_recipe(data: Any, *, base_dir: Path, source: str = "<recipe>") -> Recipe:
    """Validate already-parsed recipe data; errors name the YAML path of the problem."""
    if data is None:  # an empty file, or only comments
        raise RecipeError(f"{source}: the recipe is empty")
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: the recipe must be a mapping of keys, got {type(data).__name__}")
    try:
        return Recipe.model_validate({**data, "base_dir": base_dir, "source": source})
    except ValidationError as exc:
        raise RecipeError(one_line(exc, data, source)) from None


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file. Raises :class:`RecipeError` with a one-line message."""
    path = Path(path)
    if path.is_dir():
        raise RecipeError(f"{path}: is a folder, not a recipe file")
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    return parse_recipe(read_yaml(path), base_dir=path.resolve().parent, source=str(path))
