"""Per-example gradients in batches with ``torch.func``: ``vmap(grad(ℓ))`` over ``functional_call``.

Every parameter type is differentiated (Linear, Conv, LayerNorm, embeddings, ...): nothing is
dropped the way hook-based per-sample gradients drop unknown modules. The model runs in eval
mode: BatchNorm uses its running statistics and dropout is off, so each example's gradient does
not depend on the rest of its batch.

Shapes: a batch of B examples gives a :class:`FlatGrads` of shape [B, D], D the number of
selected parameters, with per-layer column slices from the :class:`ParamLayout`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_map

from influence_cli.errors import GradientError, first_line
from influence_cli.gradients.layers import ParamLayout
from influence_cli.loading.examples import Inputs
from influence_cli.losses import LossFn, model_outputs


def sq_norms(rows: torch.Tensor) -> torch.Tensor:
    """‖x_i‖² of each row [B, D]: [B], without a [B, D] temporary (``vector_norm`` is ~15× faster than
    ``pow(2).sum`` on ResNet-sized blocks; float32 relative error ≈ 3e-6)."""
    return torch.linalg.vector_norm(rows, dim=1).square()


def call_model(model: nn.Module, weights: dict[str, torch.Tensor], inputs: Inputs) -> torch.Tensor:
    """``model(inputs)`` with ``weights`` swapped in; dict inputs are passed as keyword arguments."""
    if isinstance(inputs, dict):
        out = functional_call(model, weights, args=(), kwargs=inputs)
    else:
        out = functional_call(model, weights, (inputs,))
    return model_outputs(out)


class GradientBatch(Protocol):
    """What the estimators need from a batch's per-example gradients, whatever their representation
    (:class:`FlatGrads`, factorised ``LayerGrads``): per-layer squared norms, per-layer scaling,
    inner products, and ``cat``."""

    layout: ParamLayout

    def __len__(self) -> int: ...

    def layer_sq_norms(self) -> torch.Tensor: ...

    def scaled(self, w: torch.Tensor) -> "GradientBatch": ...

    def dot(self, other: "GradientBatch") -> torch.Tensor: ...

    @staticmethod
    def cat(parts: list["GradientBatch"]) -> "GradientBatch": ...


@dataclass
class FlatGrads:
    """Materialised per-example gradients ``g`` [B, D] with the layer slices of ``layout``.

    The estimators only use three operations, so other representations (factorised,
    projected) can stand in: per-layer squared norms, per-layer scaling, and inner products.
    """

    g: torch.Tensor
    layout: ParamLayout

    def __len__(self) -> int:
        return self.g.shape[0]

    def layer_sq_norms(self) -> torch.Tensor:
        """‖g^l‖² for every example and layer: [B, L]."""
        return torch.stack([sq_norms(self.g[:, a:b]) for a, b in self.layout.slices], dim=1)

    def scaled(self, w: torch.Tensor) -> "FlatGrads":
        """Layer l of example i multiplied by ``w[i, l]`` ([B, L])."""
        sizes = torch.tensor([b - a for a, b in self.layout.slices], device=w.device)
        return FlatGrads(self.g * torch.repeat_interleave(w, sizes, dim=1), self.layout)

    def dot(self, other: "FlatGrads") -> torch.Tensor:
        """Σ_l ⟨g^l_i, g'^l_j⟩ = ⟨g_i, g'_j⟩ for all pairs: [B, B']."""
        return self.g @ other.g.T

    @staticmethod
    def cat(parts: list["FlatGrads"]) -> "FlatGrads":
        return FlatGrads(torch.cat([p.g for p in parts]), parts[0].layout)


def _is_causal_lm(model: nn.Module) -> bool:
    """A transformers causal language model (a class in ``AutoModelForCausalLM``'s registry)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return type(model).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()


def _expand_attention_mask(model: nn.Module, inputs: Inputs, dtype: torch.dtype) -> Inputs:
    """For a transformers model, turn a [B, T] 0/1 ``attention_mask`` m into the additive mask
    transformers accepts as "already prepared": [B, 1, 1, T] from m_s, or for a causal LM
    [B, 1, T, T] from m_s · [s ≤ t] (query t, key s), since a prepared mask is used as is.

    transformers inspects a 2D mask's values (``mask.all()``), and without a mask it looks for pad
    tokens in the ids; both are data-dependent control flow, which ``vmap`` cannot trace.
    """
    mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
    if mask is None or mask.dim() != 2 or not type(model).__module__.startswith("transformers."):
        return inputs
    keep = mask.to(dtype)[:, None, None, :]
    if _is_causal_lm(model):
        keep = keep * torch.ones(mask.shape[1], mask.shape[1], dtype=dtype, device=mask.device).tril()
    return {**inputs, "attention_mask": (1.0 - keep) * torch.finfo(dtype).min}


class PerExampleGradients:
    """Computes g(z) = ∇_θ ℓ(f_θ(x), y) for each example of a batch, restricted to ``layout``."""

    def __init__(self, model: nn.Module, layout: ParamLayout, loss_fn: LossFn) -> None:
        self.model = model.eval()
        self.layout = layout
        self.loss_fn = loss_fn

        def loss_one(selected: dict[str, torch.Tensor], rest: dict[str, torch.Tensor],
                     x: Inputs, y: torch.Tensor) -> torch.Tensor:
            xb = tree_map(lambda t: t.unsqueeze(0), x)
            out = call_model(self.model, {**rest, **selected}, xb)
            return self.loss_fn(out, y.unsqueeze(0)).sum()

        self._grad_one = grad(loss_one)
        self._grads = vmap(self._grad_one, in_dims=(None, None, 0, 0))
        self.batched = True  # False once vmap has proved unable to batch this model

    def __call__(self, weights: dict[str, torch.Tensor], inputs: Inputs, labels: torch.Tensor) -> FlatGrads:
        inputs = _expand_attention_mask(self.model, inputs, weights[self.layout.names[0]].dtype)
        selected = {n: weights[n] for n in self.layout.names}
        rest = {n: w for n, w in weights.items() if n not in selected}
        per_param = self._batched(selected, rest, inputs, labels) if self.batched else None
        if per_param is None:
            per_param = self._one_by_one(selected, rest, inputs, labels)
        g = torch.cat([per_param[n].reshape(len(labels), -1) for n in self.layout.names], dim=1)
        return FlatGrads(g, self.layout)

    def _batched(self, selected: dict[str, torch.Tensor], rest: dict[str, torch.Tensor], inputs: Inputs,
                 labels: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """``vmap(grad)`` over the batch; ``None`` (with one warning) when vmap cannot batch the model.

        Some modules have no vmap batching rule (``nn.LSTM``/``nn.GRU`` on the CPU, custom ops with
        in-place writes). Rather than fail, the run then computes those gradients one example at a
        time: exact, but slower. An error that persists for a single example is re-raised.
        """
        try:
            return self._grads(selected, rest, inputs, labels)
        except RuntimeError as exc:
            try:
                self._one_by_one(selected, rest, tree_map(lambda t: t[:1], inputs), labels[:1])
            except Exception:
                raise exc from None
            self.batched = False
            first = first_line(exc)[:160]
            warnings.warn(f"vmap cannot batch {type(self.model).__name__} ({first}); computing per-example "
                          "gradients one example at a time, which is exact but slower", RuntimeWarning,
                          stacklevel=3)
            return None

    def _one_by_one(self, selected: dict[str, torch.Tensor], rest: dict[str, torch.Tensor], inputs: Inputs,
                    labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The fallback: ``grad`` of each example's loss in turn, stacked."""
        rows = [self._grad_one(selected, rest, tree_map(lambda t: t[i], inputs), labels[i])
                for i in range(len(labels))]
        return {n: torch.stack([r[n] for r in rows]) for n in self.layout.names}


class HalveOnOutOfMemory:
    """Calls a gradient computer; when a batch runs out of CUDA memory, it is split in halves
    (recursively), each half computed, and the results concatenated, with one warning. Examples
    are independent (eval mode), so the result equals the whole batch's. Later batches start
    at the largest size that fitted."""

    def __init__(self, inner: Callable[[dict[str, torch.Tensor], Inputs, torch.Tensor], GradientBatch]) -> None:
        self.inner = inner
        self.max_batch: int | None = None

    def __getattr__(self, name: str) -> Any:  # layout, keep_factors, ... of the wrapped computer
        if name == "inner":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __call__(self, weights: dict[str, torch.Tensor], inputs: Inputs, labels: torch.Tensor) -> GradientBatch:
        n = len(labels)
        if self.max_batch is None or n <= self.max_batch:
            try:
                return self.inner(weights, inputs, labels)
            except torch.cuda.OutOfMemoryError:
                if n == 1:
                    raise GradientError("CUDA out of memory for a single example's gradient; select fewer "
                                        "`layers`, use `projection:`, or run on the CPU") from None
                self.max_batch = n // 2
                warnings.warn(f"CUDA out of memory on a batch of {n}; retrying in batches of {n // 2}",
                              RuntimeWarning, stacklevel=2)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        step = self.max_batch
        parts = [self(weights, tree_map(lambda t: t[i:i + step], inputs), labels[i:i + step])
                 for i in range(0, n, step)]
        return type(parts[0]).cat(parts)
