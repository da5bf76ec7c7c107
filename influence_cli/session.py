"""A loaded audit: model, checkpoints, data, loss and layers, ready for the gradient passes.

:meth:`Session.from_recipe` does all loading and validation up front, so that a bad recipe fails
in seconds with a one-line message, before any long pass starts. Each checkpoint file is read
once; its weights stay on the device for the whole run (C copies of the weights).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from influence_cli.curvature.arnoldi import Arnoldi
from influence_cli.curvature.ekfac import EKFAC
from influence_cli.errors import DataError, InfluenceError, RecipeError, first_line
from influence_cli.gradients.factorized import FactorizedGradients
from influence_cli.gradients.layers import ParamLayout, select_parameters
from influence_cli.gradients.per_example import (
    GradientBatch,
    HalveOnOutOfMemory,
    Inputs,
    PerExampleGradients,
    call_model,
)
from influence_cli.gradients.projection import ProjectedGradients
from influence_cli.gradients.store import GradientStore, store_key
from influence_cli.loading.checkpoints import (
    fit_to_model,
    list_checkpoints,
    load_checkpoint,
)
from influence_cli.loading.data import load_split
from influence_cli.loading.learning_rates import GUESSED
from influence_cli.loading.examples import Examples
from influence_cli.loading.models import build_model, resolve_device
from influence_cli.losses import CLASSIFICATION_LOSSES, LossFn, resolve_loss
from influence_cli.recipe import Recipe

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class CheckpointInfo:
    """What reports say about a checkpoint."""

    path: Path
    learning_rate: float
    sha256: str
    learning_rate_source: str = "recipe"  # see :mod:`influence_cli.loading.learning_rates`

    def to_dict(self) -> dict[str, object]:
        return {"path": str(self.path), "learning_rate": self.learning_rate,
                "learning_rate_source": self.learning_rate_source, "sha256": self.sha256}


@dataclass
class Session:
    """Everything a gradient pass needs. Build it with :meth:`from_recipe`."""

    recipe: Recipe
    model: nn.Module
    device: torch.device
    dtype: torch.dtype
    checkpoints: list[CheckpointInfo]
    weights: list[dict[str, torch.Tensor]]
    train: Examples
    test: Examples | None
    loss_fn: LossFn
    layout: ParamLayout
    store: GradientStore | None = None
    curvature: dict[str, EKFAC | Arnoldi] = field(default_factory=dict)  # engine.curvature's fits, kept
    gradients: HalveOnOutOfMemory = field(init=False)  # factorised / torch.func / projected, halving on OOM

    def __post_init__(self) -> None:
        grads = FactorizedGradients if self.recipe.factorize else PerExampleGradients
        inner: FactorizedGradients | PerExampleGradients | ProjectedGradients = grads(self.model, self.layout,
                                                                                      self.loss_fn)
        if self.recipe.projection is not None:
            inner = ProjectedGradients(inner, self.recipe.projection.dim, self.recipe.projection.seed)
        self.gradients = HalveOnOutOfMemory(inner)

    @classmethod
    def from_recipe(cls, recipe: Recipe, *, need_test: bool = False) -> "Session":
        """Load and validate everything the recipe names. Raises :class:`InfluenceError` subclasses."""
        device = resolve_device(recipe.device)
        dtype = _DTYPES[recipe.dtype]
        if device.type == "cuda":  # process-wide switches; off unless the recipe asks
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = recipe.tf32
        model = build_model(recipe).to(dtype=dtype).eval()
        layout = select_parameters(model, recipe.layers)
        loss_fn = resolve_loss(recipe)
        infos, weights = [], []
        for ref in list_checkpoints(recipe):
            ckpt = load_checkpoint(ref, trust=recipe.trust_checkpoints)
            state = fit_to_model(model, ckpt, ref.where)
            weights.append({k: (v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device))
                            for k, v in state.items()})
            infos.append(CheckpointInfo(ref.path, ckpt.learning_rate, ckpt.sha256, ckpt.learning_rate_source))
        _warn_guessed_rates(infos)
        model = model.to(device)
        train = load_split(recipe, "train")
        test = load_split(recipe, "test") if (need_test or recipe.data.test is not None) else None
        store = GradientStore(recipe.resolve(recipe.cache_dir), store_key(recipe)) if recipe.cache_dir else None
        session = cls(recipe, model, device, dtype, infos, weights, train, test, loss_fn, layout, store)
        for split in (train, test):
            if split is not None:
                session._check_split(split)
        return session

    @classmethod
    def of(cls, recipe_or_session: "Recipe | Session", *, need_test: bool = False) -> "Session":
        """The session itself, or one loaded from the recipe (what every library entry point accepts)."""
        if isinstance(recipe_or_session, Session):
            return recipe_or_session
        return cls.from_recipe(recipe_or_session, need_test=need_test)

    def train_gradients(self, c: int, indices: torch.Tensor, inputs: Inputs, labels: torch.Tensor) -> GradientBatch:
        """g_c(z) of the training examples ``indices`` (already batched as ``inputs``/``labels``):
        read from the gradient store when it holds them, else computed (and stored)."""
        if self.store is None:
            return self.gradients(self.weights[c], inputs, labels)
        sha = self.checkpoints[c].sha256
        grads = self.store.load(sha, indices, self.device)
        if grads is None:
            grads = self.gradients(self.weights[c], inputs, labels)
            self.store.save(sha, indices, grads)
        return grads

    @property
    def score_dtype(self) -> torch.dtype:
        """Precision of the score and self-influence accumulators: float32 for a bfloat16 run."""
        return torch.float32 if self.dtype == torch.bfloat16 else self.dtype

    @property
    def learning_rates(self) -> list[float]:
        return [c.learning_rate for c in self.checkpoints]

    @property
    def is_classifier(self) -> bool:
        return self.recipe.loss in CLASSIFICATION_LOSSES

    def require_classifier(self, command: str) -> None:
        """One line saying that the label-based ``command`` needs class labels, when the run has none."""
        if self.recipe.model.task == "causal-lm":
            raise InfluenceError(f"model.task: {command} needs a classification task; a causal-lm model has "
                                 "next-token targets, not class labels")
        if not self.is_classifier:
            raise InfluenceError(f"loss: {command} needs a classification loss (cross_entropy), "
                                 f"not {self.recipe.loss!r}")

    def to_device(self, inputs: Inputs, labels: torch.Tensor) -> tuple[Inputs, torch.Tensor]:
        """Move a batch to the device: floating inputs and regression targets take the run's dtype,
        class labels become integers. Host tensors bound for CUDA are pinned first, so the copy is
        asynchronous (``non_blocking``) and overlaps the previous batch's work."""
        pin = self.device.type == "cuda"

        def move(t: torch.Tensor) -> torch.Tensor:
            if pin and t.device.type == "cpu":
                t = t.pin_memory()
            t = t.to(self.device, non_blocking=True)
            return t.to(self.dtype) if t.is_floating_point() else t

        inputs = {k: move(v) for k, v in inputs.items()} if isinstance(inputs, dict) else move(inputs)
        labels = move(labels)
        return inputs, (labels.long() if self.is_classifier else labels)

    @torch.no_grad()
    def outputs(self, examples: Examples, indices: torch.Tensor, checkpoint: int = -1) -> torch.Tensor:
        """Model outputs f_θc(x) for ``indices`` at ``checkpoint`` (default: the final one)."""
        parts = []
        for _, x, y in examples.batches(self.recipe.batch_size, indices):
            x, _ = self.to_device(x, y)
            parts.append(call_model(self.model, self.weights[checkpoint], x))
        return torch.cat(parts)

    def predict(self, examples: Examples, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted class, its probability) at the final checkpoint, for a classifier."""
        probs = self.outputs(examples, indices).softmax(dim=1)
        prob, label = probs.max(dim=1)
        return label.cpu(), prob.cpu()

    def _check_split(self, examples: Examples) -> None:
        """Fail early on inputs the model rejects and labels it cannot take."""
        x, y = examples.batch(torch.arange(min(2, len(examples))))
        x, y = self.to_device(x, y)
        try:
            with torch.no_grad():
                out = call_model(self.model, self.weights[-1], x)
        except Exception as exc:
            shape = {k: tuple(v.shape) for k, v in x.items()} if isinstance(x, dict) else tuple(x.shape)
            raise DataError(f"{examples.name}: the model rejects inputs of shape {shape}: {first_line(exc)}") from None
        if not examples.labeled:
            return
        if not self.is_classifier:
            self._check_loss(examples, out, y)
            return
        labels = examples.labels
        if labels.dim() != 1:
            raise DataError(f"{examples.name}: {self.recipe.loss} needs one class index per example (shape [N]), "
                            f"got labels of shape {tuple(labels.shape)}")
        if labels.is_floating_point():
            if not torch.equal(labels, labels.round()):
                raise DataError(f"{examples.name}: labels must be class indices for {self.recipe.loss}, "
                                f"got non-integer values")
        if out.dim() != 2:
            raise DataError(f"{examples.name}: {self.recipe.loss} needs model outputs of shape [B, classes], "
                            f"got {tuple(out.shape)}")
        names = self.recipe.data.labels
        if names is not None and len(names) != out.shape[1]:
            raise RecipeError(f"data.labels: {len(names)} class names for a model with {out.shape[1]} outputs")
        bad = ((labels < 0) | (labels >= out.shape[1])).nonzero()
        if len(bad):
            i = int(bad[0])
            raise DataError(f"{examples.name}: label {labels[i].item():g} of example {i} is out of range "
                            f"for a model with {out.shape[1]} outputs")

    def _check_loss(self, examples: Examples, out: torch.Tensor, y: torch.Tensor) -> None:
        """The loss must take the model's outputs with these targets and return one value per example."""
        try:
            loss = self.loss_fn(out, y)
        except Exception as exc:
            raise DataError(f"{examples.name}: loss {self.recipe.loss!r} cannot compare model outputs of shape "
                            f"{tuple(out.shape)} with targets of shape {tuple(y.shape)}: {first_line(exc)}") from None
        if not isinstance(loss, torch.Tensor) or loss.shape != (len(y),):
            got = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise RecipeError(f"loss: {self.recipe.loss!r} must return one loss per example (shape "
                              f"[{len(y)}] for {len(y)} examples), got {got}")


def _warn_guessed_rates(infos: list[CheckpointInfo]) -> None:
    """One warning when η came from an optimizer whose scheduler state was not saved (it may be the
    next epoch's rate: see :mod:`influence_cli.loading.learning_rates`)."""
    guessed = [c for c in infos if c.learning_rate_source == GUESSED]
    if guessed:
        warnings.warn(f"{len(guessed)} of {len(infos)} checkpoints: η read from the optimizer state, but a "
                      "learning-rate scheduler was attached and its state was not saved, so a checkpoint saved "
                      "after scheduler.step() holds the next epoch's rate (first: "
                      f"{guessed[0].path}, η = {guessed[0].learning_rate:g}); save scheduler.state_dict() under "
                      "'scheduler' or set learning_rate in the recipe", stacklevel=3)
