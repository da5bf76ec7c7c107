"""The recipe's schema: one small pydantic model per section, ``extra="forbid"`` (a typo is an
error naming its YAML path, with the closest known key), choices typed by :mod:`influence_cli.methods`.
Relative paths are relative to the recipe file (:meth:`Recipe.resolve`)."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    NonNegativeInt,
    PositiveInt,
    Tag,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from influence_cli.methods import Method, MislabelMethod


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        """Refuse an unknown key before anything else: a typo (``pth:``) then reads as itself, not as
        the required key it was meant to be (``path: required key is missing``)."""
        unknown = [k for k in data if k not in cls.model_fields] if isinstance(data, dict) else []
        if unknown:
            keys = [k for k, field in cls.model_fields.items() if not field.exclude]  # not base_dir, source
            close = difflib.get_close_matches(str(unknown[0]), keys, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise PydanticCustomError("unknown_key", "unknown key{hint}", {"key": unknown[0], "hint": hint})
        return data


class ModelSpec(_Section):
    """How to build the (untrained) model whose checkpoints are loaded into it.

    Exactly one of ``factory`` ("pkg.module:callable" or "file.py:callable", relative to the
    recipe), ``torchvision`` (a ``torchvision.models`` name, built with ``weights=None``) or
    ``transformers`` (a local Hugging Face model folder: ``config.json``, and the tokenizer for
    text data; built for ``task`` from its config, offline).
    """

    factory: str | None = Field(None, description='"pkg.module:callable" or "file.py:callable"')
    torchvision: str | None = Field(None, description="torchvision.models name, e.g. resnet18")
    transformers: str | None = Field(None, description="local Hugging Face model folder (config.json, tokenizer)")
    task: Literal["sequence-classification"] = Field("sequence-classification",
                                                     description="transformers head (AutoModelFor<Task>)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments")

    @model_validator(mode="after")
    def _exactly_one_source(self) -> "ModelSpec":
        given = [k for k in ("factory", "torchvision", "transformers") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of `factory`, `torchvision` or `transformers`")
        return self


# η_c: finite and ≥ 0 (negative would flip every score's sign); YAML `true` is not a number
Rate = Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)] | Annotated[int, Field(ge=0, strict=True)]
LearningRate = Union[Rate, Literal["auto"]]


class CheckpointEntry(_Section):
    """One checkpoint file and its learning rate η_c (``auto``: read it from the file)."""

    path: str
    learning_rate: LearningRate = "auto"
    strip_prefix: str | None = Field(None, description="keep only state-dict keys with this prefix, stripped "
                                                       "(Lightning: the LightningModule attribute, e.g. 'model.')")


class CheckpointGlob(_Section):
    """All files matching ``glob`` (natural sort order: epoch2 before epoch10)."""

    glob: str
    learning_rate: LearningRate | list[Rate] = "auto"
    strip_prefix: str | None = Field(None, description="as for a single checkpoint entry")


class HFTrainerCheckpoints(_Section):
    """Every ``checkpoint-<step>/`` folder a ``transformers.Trainer`` run wrote into ``hf_trainer_dir``
    (by step); η_c ``auto`` is read from each folder's ``trainer_state.json``."""

    hf_trainer_dir: str
    learning_rate: LearningRate | list[Rate] = "auto"


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


class TextData(_Section):
    """A ``.jsonl`` or ``.csv`` file of texts (and optional text pairs) with labels, tokenised per
    batch by the tokenizer of ``model.transformers`` (or ``tokenizer``) with dynamic padding."""

    format: Literal["jsonl", "csv"]
    path: str
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    max_length: PositiveInt = 512
    truncation: bool = True
    tokenizer: str | None = Field(None, description="tokenizer folder; default: model.transformers")


TransformStep = Union[str, dict[str, Any]]


class ImageFolderData(_Section):
    """``root/<class>/<image>`` files, classes numbered in sorted folder-name order (torchvision
    ``ImageFolder``)."""

    format: Literal["imagefolder"]
    root: str
    extensions: list[str] | None = Field(None, description="e.g. ['.png']; default: torchvision's image types")
    transform: list[TransformStep] | None = Field(None, description="torchvision.transforms.v2 steps; "
                                                                    "default [to_tensor]")


class TorchvisionData(_Section):
    """A ``torchvision.datasets`` class read from a local ``root``; downloading is refused."""

    format: Literal["torchvision"]
    name: str = Field(description="torchvision.datasets class, e.g. MNIST, CIFAR10")
    root: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict, description="e.g. {train: false} or {split: test}")
    transform: list[TransformStep] | None = None


DataSplit = Annotated[Union[TensorsData, FactoryData, TextData, ImageFolderData, TorchvisionData],
                      Field(discriminator="format")]


class DataSpec(_Section):
    """The training split (required) and the test split (needed by ``score``)."""

    train: DataSplit
    test: DataSplit | None = None


class NoAttackTargetRule(_Section):
    """``no_attack_target``: target identification flags none of the watched test examples."""

    test_indices: list[NonNegativeInt] | None = Field(
        None, description="watched test examples (e.g. the ones a release must get right); null = every candidate")
    candidates: list[NonNegativeInt] | None = Field(
        None, description="test examples the watched ones are compared with (target-identify's anomaly score is "
                          "relative to them; the watched ones are always included); null = the whole test split")
    method: Method = Field(Method.GAS_L, description="target-identify estimator")


class ChecksSpec(_Section):
    """Rules of ``influence-cli check``: each rule that is set must hold, unset rules are skipped.

    Counts are over flagged training examples that are not in the baseline (without a baseline,
    every flagged example counts). A key that is neither a rule nor a setting is an error.
    """

    baseline: str | None = Field(None, description="baseline JSON of accepted flagged examples, relative to the "
                                                   "recipe (`--baseline` overrides)")
    mislabel_method: MislabelMethod | None = Field(None, description="mislabel-detect method; null = its default")
    max_flagged_mislabel_fraction: float | None = Field(
        None, ge=0, le=1, description="rule: flagged mislabels / N ≤ this")
    max_flagged_mislabel_per_class: NonNegativeInt | None = Field(
        None, description="rule: flagged mislabels with any one given label ≤ this")
    no_attack_target: NoAttackTargetRule | None = Field(
        None, description="rule: target-identify raises no flag on the watched test examples")
    max_new_flagged: NonNegativeInt | None = Field(
        None, description="rule: flagged mislabels that are not in the baseline ≤ this")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        """An unknown key is named with the list of rules (replaces :meth:`_Section._known_keys`)."""
        unknown = sorted(set(data) - set(cls.model_fields), key=str) if isinstance(data, dict) else []
        if unknown:
            raise ValueError(f"unknown rule {unknown[0]!r}; known rules and settings: {', '.join(cls.model_fields)}")
        return data

    @model_validator(mode="after")
    def _some_rule(self) -> "ChecksSpec":
        if not any(getattr(self, k) is not None for k in self.rule_keys()):
            raise ValueError(f"give at least one rule: {', '.join(self.rule_keys())}")
        return self

    @classmethod
    def rule_keys(cls) -> list[str]:
        """The rule keys (every field that is not a setting)."""
        return [k for k in cls.model_fields if k not in ("baseline", "mislabel_method")]


class ProjectionSpec(_Section):
    """Seeded random projection of each layer's gradient block to ``dim`` numbers (layers with at
    most ``dim`` parameters stay exact); see :mod:`influence_cli.gradients.projection`."""

    dim: PositiveInt = Field(description="K: numbers kept per layer (E⟨Pg, Pg′⟩ = ⟨g, g′⟩)")
    seed: NonNegativeInt = Field(0, description="seed of the random draws (same projection everywhere)")


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _some_checkpoints(entries: list[CheckpointEntry]) -> list[CheckpointEntry]:
    """A list of checkpoints is not empty (said in the project's words, not pydantic's)."""
    if not entries:
        raise ValueError("needs at least one checkpoint")
    return entries


def _checkpoints_form(value: Any) -> str | None:
    """Which form of ``checkpoints`` was written, so that errors come from that form only. The tags
    are not YAML keys (error locations drop them)."""
    if isinstance(value, (list, tuple)):
        return "<list>"
    if isinstance(value, HFTrainerCheckpoints) or (isinstance(value, dict) and "hf_trainer_dir" in value):
        return "<hf_trainer_dir>"
    return "<glob>" if isinstance(value, (dict, CheckpointGlob)) else None


Checkpoints = Annotated[Union[Annotated[list[CheckpointEntry], AfterValidator(_some_checkpoints), Tag("<list>")],
                              Annotated[CheckpointGlob, Tag("<glob>")],
                              Annotated[HFTrainerCheckpoints, Tag("<hf_trainer_dir>")]],
                        Discriminator(_checkpoints_form, custom_error_type="checkpoints_type",
                                      custom_error_message="expected a list or a mapping")]


class Recipe(_Section):
    """A whole recipe. ``base_dir`` is the folder relative paths are resolved against."""

    model: ModelSpec
    checkpoints: Checkpoints
    data: DataSpec
    loss: str = Field("cross_entropy", description="cross_entropy | mse | bce_with_logits | file.py:fn")
    layers: list[str] | None = Field(None, description="module/parameter names or globs; null = all")
    batch_size: Annotated[int, Field(gt=0, strict=True)] = 256
    device: str = "auto"
    dtype: Literal["float32", "float64", "bfloat16"] = Field(
        "float32", description="model and gradient precision; bfloat16 accumulates scores in float32")
    tf32: bool = Field(False, description="allow TF32 matrix products on CUDA (faster, ~1e-3 relative error)")
    output: str = "runs/audit"
    trust_checkpoints: bool = Field(False, description="allow pickle in checkpoint files")
    factorize: bool = Field(True, description="Linear/Conv2d gradients as factors ⟨a,a′⟩⟨e,e′⟩ when cheaper; "
                                              "false = materialise every gradient with torch.func")
    projection: ProjectionSpec | None = Field(None, description="{dim: K, seed: S}: random projection; null = exact")
    cache_dir: str | None = Field(None, description="folder of the resumable training-gradient store (relative to "
                                                    "the recipe); null = no store")
    checks: ChecksSpec | None = Field(None, description="rules of `influence-cli check`")
    base_dir: Path = Field(Path("."), exclude=True)
    source: str = Field("<recipe>", exclude=True)

    @field_validator("device")
    @classmethod
    def _check_device(cls, device: str) -> str:
        if not _DEVICE.match(device):
            raise ValueError(f"must be auto, cpu, cuda or cuda:N, not {device!r}")
        return device

    def resolve(self, path: str | Path) -> Path:
        """``path`` made absolute against the recipe's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain JSON-safe data (what reports record)."""
        return self.model_dump(mode="json", exclude_none=True)
