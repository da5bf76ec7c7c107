"""The recipe's schema: one small pydantic model per section, ``extra="forbid"`` (a typo is an
error naming its YAML path, with the closest known key), choices typed by :mod:`influence_cli.methods`.
Relative paths are relative to the recipe file (:meth:`Recipe.resolve`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    Discriminator,
    Field,
    NonNegativeInt,
    PositiveInt,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from influence_cli.recipe.checks import ChecksSpec
from influence_cli.recipe.section import Section


class ModelSpec(Section):
    """How to build the (untrained) model whose checkpoints are loaded into it.

    Exactly one of ``factory`` ("pkg.module:callable" or "file.py:callable", relative to the
    recipe), ``torchvision`` (a ``torchvision.models`` name, built with ``weights=None``) or
    ``transformers`` (a local Hugging Face model folder: ``config.json``, and the tokenizer for
    text data; built for ``task`` from its config, offline).
    """

    factory: str | None = Field(None, description='a callable returning the untrained `nn.Module`: "pkg.module:callable" '
                                                  'or "file.py:callable" (relative to the recipe)')
    torchvision: str | None = Field(None, description="a `torchvision.models` name, e.g. resnet18, built with "
                                                      "`weights=None` (no download)")
    transformers: str | None = Field(
        None, description="a local Hugging Face model folder (`config.json`; the tokenizer for text data). An untrained "
                          "`AutoModelFor<Task>` is built from its config with `local_files_only` "
                          "(nothing downloads); the checkpoints supply the weights. Attention defaults to `eager`")
    task: Literal["sequence-classification", "causal-lm"] | None = Field(
        None, description="the transformers head (`AutoModelFor<Task>`; its logits go to `loss`): "
                          "sequence-classification (the default for `transformers` models) or causal-lm "
                          "(`AutoModelForCausalLM`, loss `token_nll`, text data of `text` or `prompt` + `completion` "
                          "rows); not allowed with the others")
    kwargs: dict[str, Any] = Field(default_factory=dict, description=(
        "keyword arguments of the factory or the torchvision builder; for `transformers`, overrides of config "
        "settings (e.g. `attn_implementation: sdpa`; an unknown setting is an error)"))

    @model_validator(mode="after")
    def _exactly_one_source(self) -> "ModelSpec":
        given = [k for k in ("factory", "torchvision", "transformers") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of `factory`, `torchvision` or `transformers`")
        return self

    @field_validator("task")
    @classmethod
    def _task_of_transformers(cls, task: str | None, info: ValidationInfo) -> str | None:
        if task is not None and not info.data.get("transformers"):
            raise ValueError("applies to `transformers` models only")
        return task

    @model_validator(mode="before")
    @classmethod
    def _default_task(cls, data: Any) -> Any:
        """A transformers model's head defaults to sequence-classification (recorded in run.json);
        other models have no ``task``."""
        transformers = isinstance(data, dict) and data.get("transformers") and data.get("task") is None
        return {**data, "task": "sequence-classification"} if transformers else data


# η_c: finite and ≥ 0 (negative would flip every score's sign); YAML `true` is not a number
Rate = Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)] | Annotated[int, Field(ge=0, strict=True)]
LearningRate = Union[Rate, Literal["auto"]]


class CheckpointEntry(Section):
    """One checkpoint file and its learning rate η_c (``auto``: read it from the file).

    A checkpoint is a plain state dict, a dict with ``model_state_dict``/``state_dict``/``model`` (plus
    optional ``optimizer_state_dict``, ``learning_rate``/``lr``), or a ``.safetensors`` state dict; a
    ``module.`` prefix (DDP) is stripped. Every floating tensor the model takes (weights and buffers
    such as BatchNorm statistics) must be finite, also in the recipe's ``dtype``: a NaN/inf is an error
    naming the file and the tensor. A folder is an error (for a Trainer's ``checkpoint-<step>/`` it
    suggests ``hf_trainer_dir``)."""

    path: str = Field(description="the checkpoint file (relative to the recipe)")
    learning_rate: LearningRate = Field("auto", description=(
        "η_c ≥ 0 (a negative rate, which would flip every score, is an error) or `auto`: the rate of the epochs "
        "that led to the checkpoint, read from the file's `learning_rate`/`lr`, else its saved scheduler state "
        "(StepLR, MultiStepLR, ExponentialLR, CosineAnnealingLR, LinearLR, ConstantLR, PolynomialLR: the rate "
        "before the last `scheduler.step()`), else its optimizer state's first param group (with one warning "
        "when a scheduler was attached but not saved); none is an error naming the file, never a silent 1.0"))
    strip_prefix: str | None = Field(None, description=(
        "keep only the state-dict keys starting with this prefix, stripped; other keys are dropped. PyTorch "
        "Lightning `.ckpt`: the LightningModule attribute holding the network (`model.` for `self.model`), and "
        "`optimizer_states` give `learning_rate: auto`. A prefix that matches no key is an error"))


class CheckpointGlob(Section):
    """All files matching ``glob`` (natural sort order: epoch2 before epoch10)."""

    glob: str = Field(description="a file pattern (relative to the recipe); every match is a checkpoint, in natural "
                                  "order")
    learning_rate: LearningRate | list[Rate] = Field("auto", description="one η for every file, a list (one per file) "
                                                                        "or `auto` (per file, as for one entry)")
    strip_prefix: str | None = Field(None, description="as for a single checkpoint entry")


class HFTrainerCheckpoints(Section):
    """Every ``checkpoint-<step>/`` folder a ``transformers.Trainer`` run wrote into ``hf_trainer_dir``
    (by step); η_c ``auto`` is read from each folder's ``trainer_state.json``.

    Each folder's ``model.safetensors`` is read (``pytorch_model.bin`` only with ``trust_checkpoints:
    true``; sharded ``*.index.json`` checkpoints are refused). With ``auto``, the checkpoint at step S
    gets η_c = the ``learning_rate`` of the last ``log_history`` entry with step ≤ S in its
    ``trainer_state.json``; a missing file, or no rate at or before S, is an error naming the file."""

    hf_trainer_dir: str = Field(description="a `transformers.Trainer` `output_dir` (relative to the recipe)")
    learning_rate: LearningRate | list[Rate] = Field("auto", description="`auto`, one number, or a list (one per "
                                                                        "`checkpoint-<step>/` folder)")


class TensorsData(Section):
    """A ``.pt`` or ``.safetensors`` file holding an ``inputs`` and a ``labels`` tensor."""

    format: Literal["tensors"] = Field(description="selects this form")
    path: str = Field(description="the file (relative to the recipe)")
    inputs_key: str = Field("inputs", description="its entry holding the inputs [N, ...]: a tensor, or a dict of "
                                                  "tensors (token ids, attention mask)")
    labels_key: str = Field("labels", description="its entry holding the labels [N]; a test file without it needs "
                                                  "`score --test-labels predicted` (its reports show `label: null`)")


class FactoryData(Section):
    """A callable returning a ``torch.utils.data.Dataset`` of (input, label) pairs, or a tuple
    ``(inputs, labels)`` of tensors."""

    format: Literal["factory"] = Field(description="selects this form")
    factory: str = Field(description='"pkg.module:callable" or "file.py:callable" (relative to the recipe); inputs '
                                     "may be a dict of tensors")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the factory")


class TextData(Section):
    """A ``.jsonl`` or ``.csv`` file of texts (and optional text pairs) with labels, tokenised per
    batch by the tokenizer of ``model.transformers`` (or ``tokenizer``) with dynamic padding.

    One row per example; each batch is padded to its own longest row. Only the inputs the model's
    ``forward`` takes are passed (no ``token_type_ids`` for DistilBERT). A causal-lm model reads
    ``text`` rows or ``prompt`` + ``completion`` rows and no labels: its targets are the next tokens."""

    format: Literal["jsonl", "csv"] = Field(description="selects this form")
    path: str = Field(description="the file (relative to the recipe)")
    text_column: str = Field("text", description="column of the text")
    text_pair_column: str | None = Field(None, description="column of a pair's second text; null = single texts")
    label_column: str = Field("label", description="column of the label: a string goes through the config's "
                                                   "`label2id`, else it must be an integer class id (not causal-lm)")
    prompt_column: str = Field("prompt", description="causal-lm: column of the prompt, whose tokens are not scored")
    completion_column: str = Field("completion", description=(
        "causal-lm: column of the completion. When the first row has it, every row is prompt + completion and only "
        "completion tokens count; otherwise every token of `text_column` counts"))
    max_length: PositiveInt = Field(512, description="tokens kept per example (with `truncation`)")
    truncation: bool = Field(True, description="truncate rows longer than `max_length`")
    tokenizer: str | None = Field(None, description="tokenizer folder; default: model.transformers")


TransformStep = Union[str, dict[str, Any]]


class ImageFolderData(Section):
    """``root/<class>/<image>`` files, classes numbered in sorted folder-name order (torchvision
    ``ImageFolder``).

    Class ids come from the sorted folder names **of the training root**, so a test folder with fewer
    classes keeps the training numbering (a test class unknown to training is an error)."""

    format: Literal["imagefolder"] = Field(description="selects this form")
    root: str = Field(description="the folder of class folders (relative to the recipe)")
    extensions: list[str] | None = Field(None, description="e.g. ['.png']; default: torchvision's image types")
    transform: list[TransformStep] | None = Field(None, description="deterministic `torchvision.transforms.v2` "
                                                                    "steps (see [Transform steps](#transform-steps)); default [to_tensor]")


class TorchvisionData(Section):
    """A ``torchvision.datasets`` class read from a local ``root``; downloading is refused.

    Built as ``torchvision.datasets.<name>(root, transform, **kwargs)`` from local files; ``download: true``
    is refused."""

    format: Literal["torchvision"] = Field(description="selects this form")
    name: str = Field(description="torchvision.datasets class, e.g. MNIST, CIFAR10")
    root: str | None = Field(None, description="the dataset's local folder (relative to the recipe)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="e.g. {train: false} or {split: test}")
    transform: list[TransformStep] | None = Field(None, description="as for imagefolder; default [to_tensor]")


DataSplit = Annotated[Union[TensorsData, FactoryData, TextData, ImageFolderData, TorchvisionData],
                      Field(discriminator="format")]


class DataSpec(Section):
    """The training split (required) and the test split (needed by ``score``)."""

    train: DataSplit = Field(description="the training split: one of the five formats below, chosen by `format`")
    test: DataSplit | None = Field(None, description="the test split (same formats); needed by `score`, "
                                                     "`target-identify` and `no_attack_target`")
    labels: list[str] | None = Field(None, description="class names by id (e.g. [cat, dog]) for data that does "
                                                       "not name its classes (tensors, factory)")


#: The family of maps :mod:`influence_cli.gradients.projection` implements for ``projection: {dim, seed}``
#: (1: Kronecker P_e ⊗ P_a + CountSketch; 2: CountSketch / TensorSketch to K per layer). Stores and
#: result fingerprints that identify a projection by its settings include it, so gradients projected by
#: an earlier sketch are never reused.
SKETCH_VERSION = 2


class ProjectionSpec(Section):
    """Seeded random projection of each layer's gradient block to ``dim`` numbers (layers with at
    most ``dim`` parameters stay exact); see :mod:`influence_cli.gradients.projection`."""

    dim: PositiveInt = Field(description="K: numbers kept per layer (E⟨Pg, Pg′⟩ = ⟨g, g′⟩)")
    seed: NonNegativeInt = Field(0, description="seed of the random draws (same projection everywhere)")


class CurvatureSpec(Section):
    """Settings of the curvature-aware methods ``ekfac`` and ``arnoldi`` (see :mod:`influence_cli.curvature`)."""

    damping: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = Field(
        None, description="ekfac: λ added to every layer's curvature; null = 0.1 × the mean of the layer's eigenvalues")
    seed: NonNegativeInt = Field(0, description="seed of ekfac's sampled labels and of arnoldi's start vector")
    eigenpairs: PositiveInt = Field(20, description="arnoldi: p, the top eigenpairs of the Gauss-Newton matrix kept")
    iterations: PositiveInt | None = Field(None, description="arnoldi: Arnoldi steps (one training pass each); "
                                                             "null = 2 × eigenpairs")
    checkpoints: Literal["last", "all"] = Field(
        "last", description="last: the final checkpoint's influence; all: Σ_c η_c g′_cᵀ(G_c + λI)⁻¹g_c, one fit "
                            "per checkpoint (η_c as TracIn's)")
    renormalize: bool = Field(
        False, description="GAS-style: each checkpoint's term as a cosine in the curvature's metric, "
                           "g′ᵀPg / √(g′ᵀPg′ · gᵀPg) (score, target-identify; not mislabel-detect)")


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


class Recipe(Section):
    """A whole recipe. ``base_dir`` is the folder relative paths are resolved against.

    The model is evaluated in **eval mode** at every checkpoint: BatchNorm uses its running
    statistics and dropout is off, so an example's gradient does not depend on its batch."""

    model: ModelSpec = Field(description="how to build the model the checkpoints are loaded into")
    checkpoints: Checkpoints = Field(description="the training checkpoints with their learning rates η_c: a list of "
                                                 "files, a `glob`, or a Trainer's `hf_trainer_dir`")
    data: DataSpec = Field(description="the training and test splits")
    loss: str = Field("cross_entropy", description="per-example loss: cross_entropy (classification) | mse | "
                                                   "bce_with_logits | token_nll (mean next-token negative "
                                                   "log-likelihood; the default and only built-in for causal-lm) | "
                                                   "a callable `(outputs, targets) -> losses[B]` "
                                                   '("file.py:fn" or "pkg.module:fn")')
    layers: list[str] | None = Field(None, description="module or parameter names or `fnmatch` globs (`fc*`, "
                                                       "`classifier.*`); a module selects all its parameters; "
                                                       "null = every trainable parameter")
    batch_size: Annotated[int, Field(gt=0, strict=True)] = Field(
        256, description="examples per gradient batch: memory is bounded by it, not by the data size")
    device: str = Field("auto", description="auto (CUDA when available, else the CPU) | cpu | cuda | cuda:N; CUDA "
                                            "where there is none, or a GPU number the machine lacks, is an error; "
                                            "other devices (e.g. Apple mps) are not supported")
    dtype: Literal["float32", "float64", "bfloat16"] = Field(
        "float32", description="model and gradient precision: float64 for reference-grade numbers; bfloat16 "
                               "accumulates scores in float32 (1e-2 to 2e-1 relative error, docs/performance.md)")
    tf32: bool = Field(False, description="allow TF32 matrix products and convolutions on CUDA "
                                          "(`torch.backends.cuda.matmul.allow_tf32`, `cudnn.allow_tf32`; process-wide; "
                                          "~1e-3 relative error); ignored on the CPU")
    output: str = Field("runs/audit", description="default output folder (`--out`), relative to the recipe")
    trust_checkpoints: bool = Field(False, description=(
        "allow pickle in checkpoint files, which can run code: set it only for files you trust. Checkpoints load "
        "with `torch.load(weights_only=True)`; whether a refused file needs pickle or is corrupt is decided by "
        "reading its pickle opcodes, which runs nothing"))
    factorize: bool = Field(True, description="Linear/Conv2d gradients as factors ⟨a,a′⟩⟨e,e′⟩ when cheaper, exact "
                                              "either way; false = materialise every gradient with torch.func")
    projection: ProjectionSpec | None = Field(None, description="{dim: K, seed: S}: random projection; null = exact")
    curvature: CurvatureSpec | None = Field(None, description="settings of methods ekfac and arnoldi; null = defaults")
    cache_dir: str | None = Field(None, description="folder of the resumable training-gradient store (relative to "
                                                    "the recipe); null = no store; `--no-cache` ignores it")
    memory_gb: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = Field(
        None, description="GiB the test side (C checkpoints × M test examples' gradients) may hold; more test examples "
                          "are explained in chunks, one training pass each; null = half the device's free memory")
    checks: ChecksSpec | None = Field(None, description="rules of `influence-cli check`")
    base_dir: Path = Field(Path("."), exclude=True)
    source: str = Field("<recipe>", exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _causal_lm_loss(cls, data: Any) -> Any:
        """A causal-lm model's loss defaults to token_nll."""
        model = data.get("model") if isinstance(data, dict) else None
        causal = isinstance(model, dict) and model.get("task") == "causal-lm"
        return {**data, "loss": "token_nll"} if causal and "loss" not in data else data

    @field_validator("loss")
    @classmethod
    def _loss_of_task(cls, loss: str, info: ValidationInfo) -> str:
        model = info.data.get("model")
        if isinstance(model, ModelSpec) and model.task == "causal-lm" and ":" not in loss and loss != "token_nll":
            raise ValueError(f"a causal-lm model takes token_nll or a callable, not {loss!r}")
        return loss

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
