"""The YAML recipe: schema, validation and path resolution.

A recipe names a model, its training checkpoints (with learning rates η_c), the data, the loss
and the layers to differentiate. Every section is a small pydantic model with ``extra="forbid"``
so that a typo is an error naming its YAML path, not a silently ignored key. Relative paths are
relative to the recipe file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

from influence_cli.errors import RecipeError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Section):
    """How to build the (untrained) model whose checkpoints are loaded into it.

    Exactly one of ``factory`` ("pkg.module:callable" or "file.py:callable", relative to the
    recipe) or ``torchvision`` (a ``torchvision.models`` name, built with ``weights=None``).
    """

    factory: str | None = Field(None, description='"pkg.module:callable" or "file.py:callable"')
    torchvision: str | None = Field(None, description="torchvision.models name, e.g. resnet18")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments")

    @model_validator(mode="after")
    def _exactly_one_source(self) -> "ModelSpec":
        given = [k for k in ("factory", "torchvision") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of `factory` or `torchvision`")
        return self


LearningRate = Union[float, Literal["auto"]]


class CheckpointEntry(_Section):
    """One checkpoint file and its learning rate η_c (``auto``: read it from the file)."""

    path: str
    learning_rate: LearningRate = "auto"


class CheckpointGlob(_Section):
    """All files matching ``glob`` (natural sort order: epoch2 before epoch10)."""

    glob: str
    learning_rate: LearningRate | list[float] = "auto"


class TensorsData(_Section):
    """A ``.pt`` or ``.safetensors`` file holding an ``inputs`` and a ``labels`` tensor."""

    format: Literal["tensors"]
    path: str
    inputs_key: str = "inputs"
    labels_key: str = "labels"


class FactoryData(_Section):
    """A callable returning a ``torch.utils.data.Dataset`` of (input, label) pairs, or a tuple
    ``(inputs, labels)`` of tensors."""

    format: Literal["factory"]
    factory: str
    kwargs: dict[str, Any] = Field(default_factory=dict)


DataSplit = Annotated[Union[TensorsData, FactoryData], Field(discriminator="format")]


class DataSpec(_Section):
    """The training split (required) and the test split (needed by ``score``)."""

    train: DataSplit
    test: DataSplit | None = None


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


class Recipe(_Section):
    """A whole recipe. ``base_dir`` is the folder relative paths are resolved against."""

    model: ModelSpec
    checkpoints: Annotated[list[CheckpointEntry], Field(min_length=1)] | CheckpointGlob
    data: DataSpec
    loss: str = Field("cross_entropy", description="cross_entropy | mse | bce_with_logits | file.py:fn")
    layers: list[str] | None = Field(None, description="module/parameter names or globs; null = all")
    batch_size: PositiveInt = 256
    device: str = "auto"
    dtype: Literal["float32", "float64"] = "float32"
    output: str = "runs/audit"
    trust_checkpoints: bool = Field(False, description="allow pickle in checkpoint files")
    base_dir: Path = Field(Path("."), exclude=True)
    source: str = Field("<recipe>", exclude=True)

    @field_validator("device")
    @classmethod
    def _check_device(cls, device: str) -> str:
        if not _DEVICE.match(device):
            raise ValueError(f"must be auto, cpu, cuda, cuda:N or mps, not {device!r}")
        return device

    def resolve(self, path: str | Path) -> Path:
        """``path`` made absolute against the recipe's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain JSON-safe data (what reports record)."""
        return self.model_dump(mode="json", exclude_none=True)


def _format_loc(loc: tuple[Any, ...], data: Any) -> str:
    """Render a pydantic error location as a YAML path, dropping pydantic's union-branch tags
    (they are not keys of the user's data)."""
    parts: list[str] = []
    node = data
    for pos, item in enumerate(loc):
        last = pos == len(loc) - 1
        if isinstance(node, list) and isinstance(item, int) and 0 <= item < len(node):
            parts.append(f"[{item}]")
            node = node[item]
        elif isinstance(node, dict) and item in node:
            parts.append(("." if parts else "") + str(item))
            node = node[item]
        elif last and isinstance(node, dict) and isinstance(item, str):
            parts.append(("." if parts else "") + item)  # a missing key
    return "".join(parts) or "<top level>"


def _one_line(exc: ValidationError, data: Any, source: str) -> str:
    errors = exc.errors()
    # Prefer the error that names the deepest location: it is the most specific.
    first = max(errors, key=lambda e: len(e["loc"]))
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    return f"{source}: {_format_loc(first['loc'], data)}: {msg}"


def parse_recipe(data: Any, *, base_dir: Path, source: str = "<recipe>") -> Recipe:
    """Validate already-parsed recipe data; errors name the YAML path of the problem."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: the recipe must be a mapping of keys, got {type(data).__name__}")
    try:
        return Recipe.model_validate({**data, "base_dir": base_dir, "source": source})
    except ValidationError as exc:
        raise RecipeError(_one_line(exc, data, source)) from None


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file. Raises :class:`RecipeError` with a one-line message."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{path}{where}: malformed YAML: {problem}") from None
    return parse_recipe(data, base_dir=path.resolve().parent, source=str(path))
