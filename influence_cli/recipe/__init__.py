"""The YAML recipe: schema, validation and path resolution.

A recipe is a short YAML file (UTF-8) that names a model, its training checkpoints (with learning
rates η_c), the data, the loss and the layers to differentiate. Relative paths are relative to the
recipe file. Every section is a small pydantic model with ``extra="forbid"``: an unknown key is an
error naming its YAML path and the closest known key (``recipe.yaml: checkpoints[0].pth: unknown
key (did you mean 'path'?)``), so a typo or a leftover block never passes silently. The YAML is
read with a safe loader that also refuses a key given twice in one mapping, at any level
(``recipe.yaml:7: duplicate key 'checkpoints' (first at line 2)``, where plain YAML would keep the
last one), absurdly deep nesting and self-containing aliases, and reads ``10:20`` as the string it
looks like (an index range), not as YAML 1.1's base-60 number 620.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from influence_cli.errors import RecipeError
from influence_cli.recipe.checks import ChecksSpec, NoAttackTargetRule
from influence_cli.recipe.messages import one_line
from influence_cli.recipe.schema import (
    CheckpointEntry,
    CheckpointGlob,
    CurvatureSpec,
    DataSpec,
    DataSplit,
    FactoryData,
    HFTrainerCheckpoints,
    ImageFolderData,
    ModelSpec,
    ProjectionSpec,
    Recipe,
    TensorsData,
    TextData,
    TorchvisionData,
    TransformStep,
)
from influence_cli.recipe.strict_yaml import read_yaml

__all__ = ["ChecksSpec", "CurvatureSpec", "CheckpointEntry", "CheckpointGlob", "DataSpec", "DataSplit", "FactoryData",
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
