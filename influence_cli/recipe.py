"""The YAML recipe: schema, validation and path resolution.

A recipe names a model, its training checkpoints (with learning rates η_c), the data, the loss
and the layers to differentiate. Every section is a small pydantic model with ``extra="forbid"``
so that a typo is an error naming its YAML path, not a silently ignored key. Relative paths are
relative to the recipe file. The YAML is read with a safe loader that also refuses a key given
twice in one mapping (the last one would silently win) and absurdly deep nesting.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    NonNegativeInt,
    PositiveInt,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from influence_cli.errors import RecipeError


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
    method: Literal["gas-l", "gas", "tracin"] = Field("gas-l", description="target-identify estimator")


class ChecksSpec(_Section):
    """Rules of ``influence-cli check``: each rule that is set must hold, unset rules are skipped.

    Counts are over flagged training examples that are not in the baseline (without a baseline,
    every flagged example counts). A key that is neither a rule nor a setting is an error.
    """

    baseline: str | None = Field(None, description="baseline JSON of accepted flagged examples, relative to the "
                                                   "recipe (`--baseline` overrides)")
    mislabel_method: str | None = Field(None, description="mislabel-detect method; null = its default")
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


def _yaml_path(error: ErrorDetails, data: Any) -> list[str]:
    """The YAML path of a pydantic error as parts (``["checkpoints", "[0]", ".path"]``), dropping
    pydantic's union-branch tags (they are not keys of the user's data)."""
    loc = error["loc"]
    if error["type"] == "unknown_key":
        loc = (*loc, error["ctx"]["key"])
    elif error["type"].startswith("union_tag_"):  # the discriminating key (`format`) is missing or wrong
        loc = (*loc, error["ctx"]["discriminator"].strip("'"))
    parts: list[str] = []
    node = data
    for pos, item in enumerate(loc):
        if isinstance(node, list) and isinstance(item, int) and 0 <= item < len(node):
            parts.append(f"[{item}]")
            node = node[item]
        elif isinstance(node, dict) and item in node:
            parts.append(("." if parts else "") + str(item))
            node = node[item]
        elif pos == len(loc) - 1 and error["type"] in ("missing", "union_tag_not_found"):
            parts.append(("." if parts else "") + str(item))  # a missing key
    return parts


def _shown(value: Any) -> str:
    """A value the way the user wrote it in YAML, kept short."""
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


# pydantic's error types in the project's own words: "expected <what>, got <value>"
_EXPECTED = {"int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
             "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
             "string_type": "a string", "bool_type": "true or false", "bool_parsing": "true or false",
             "list_type": "a list", "dict_type": "a mapping of keys", "model_type": "a mapping of keys",
             "checkpoints_type": "a list of checkpoints or a mapping with `glob` or `hf_trainer_dir`"}
_BOUNDS = {"greater_than": ("greater than", "gt"), "greater_than_equal": ("greater than or equal to", "ge"),
           "less_than": ("less than", "lt"), "less_than_equal": ("less than or equal to", "le")}


def _message(error: ErrorDetails, literals: list[str]) -> str:
    """What is wrong, in the project's words for the common cases (pydantic's otherwise).
    ``literals``: the values another branch of a union would take at the same place (``'auto'``)."""
    kind, ctx, got = error["type"], error.get("ctx", {}), _shown(error["input"])
    if kind in _EXPECTED:
        return f"expected {' or '.join([_EXPECTED[kind], *literals])}, got {got}"
    if kind in _BOUNDS:
        words, bound = _BOUNDS[kind]
        return f"must be {words} {ctx[bound]:g}, got {got}"
    if kind in ("missing", "union_tag_not_found"):
        return "required key is missing"
    if kind == "literal_error":  # pydantic writes "'a', 'b' or 'c'"
        values = ctx["expected"].replace(" or ", ", ")
        return f"expected {'one of ' if ',' in values else ''}{values}, got {got}"
    if kind == "union_tag_invalid":
        key, tags = ctx["discriminator"].strip("'"), ctx["expected_tags"].replace("'", "")
        return f"unknown {key} {ctx['tag']!r} (expected one of: {tags})"
    return error["msg"].removeprefix("Value error, ")


def _one_line(exc: ValidationError, data: Any, source: str) -> str:
    # The error at the deepest YAML path is the most specific; at equal depth an unknown key comes
    # first (it usually explains the others), then pydantic's order (the first union branch).
    errors = [(_yaml_path(e, data), e) for e in exc.errors()]
    path, error = max(errors, key=lambda pe: (len(pe[0]), pe[1]["type"] == "unknown_key"))
    literals = [e["ctx"]["expected"] for p, e in errors
                if p == path and e["type"] == "literal_error" and e is not error]
    return f"{source}: {''.join(path) or '<top level>'}: {_message(error, literals)}"


def parse_recipe(data: Any, *, base_dir: Path, source: str = "<recipe>") -> Recipe:
    """Validate already-parsed recipe data; errors name the YAML path of the problem."""
    if data is None:  # an empty file, or only comments
        raise RecipeError(f"{source}: the recipe is empty")
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: the recipe must be a mapping of keys, got {type(data).__name__}")
    try:
        return Recipe.model_validate({**data, "base_dir": base_dir, "source": source})
    except ValidationError as exc:
        raise RecipeError(_one_line(exc, data, source)) from None


MAX_DEPTH = 100  # levels of nested lists and mappings; a recipe needs about 6


class _YAMLRefusal(yaml.YAMLError):
    """Well-formed YAML that a recipe may not be: ``text`` is the problem at 1-based ``line``."""

    def __init__(self, line: int, text: str) -> None:
        super().__init__(text)
        self.line, self.text = line, text


class _RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (at any level), nesting
    deeper than :data:`MAX_DEPTH` (which would exhaust Python's recursion while composing) and an
    alias inside the node it names (``&a [*a]``: a structure that contains itself)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._open: list[str | None] = []  # anchors of the nodes being composed, outermost first

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent) and event.anchor in self._open:
            raise _YAMLRefusal(line, f"alias *{event.anchor} is used inside &{event.anchor} itself (a list or "
                                     "mapping cannot contain itself)")
        if len(self._open) == MAX_DEPTH:
            raise _YAMLRefusal(line, f"nested too deeply (more than {MAX_DEPTH} levels of lists and mappings)")
        self._open.append(getattr(event, "anchor", None))
        try:
            return super().compose_node(parent, index)
        finally:
            self._open.pop()

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`; its keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                earlier = first.setdefault(key, key_node)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if earlier is not key_node:
                raise _YAMLRefusal(key_node.start_mark.line + 1, f"duplicate key {key!r} (first at line "
                                                                f"{earlier.start_mark.line + 1})")
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path) -> Any:
    """The parsed YAML of a recipe file; every problem is a one-line :class:`RecipeError`."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read the recipe: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
    try:
        return yaml.load(text, Loader=_RecipeLoader)  # a SafeLoader subclass: nothing is constructed but data
    except _YAMLRefusal as exc:
        raise RecipeError(f"{path}:{exc.line}: {exc.text}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{path}{where}: malformed YAML: {problem}") from None


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file. Raises :class:`RecipeError` with a one-line message."""
    path = Path(path)
    if path.is_dir():
        raise RecipeError(f"{path}: is a folder, not a recipe file")
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    return parse_recipe(_read_yaml(path), base_dir=path.resolve().parent, source=str(path))
