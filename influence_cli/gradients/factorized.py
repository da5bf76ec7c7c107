"""Factorised ("ghost") per-example gradients: nn.Linear, transformers' Conv1D and nn.Conv2d as outer products.

For a Linear layer y_t = W a_t + b applied at positions t = 1..T (T = 1 without a sequence
dimension) the per-example gradient of weight ⊕ bias is

    G = Σ_t e_t ã_tᵀ  ∈ ℝ^{q×p},   e_t = ∂ℓ/∂y_t ∈ ℝ^q,   ã_t = [a_t; 1] ∈ ℝ^p

(the trailing 1 is the bias column, so the bias is included; ã_t = a_t when only the weight is
selected, ã_t = [1] when only the bias is). Hence, without ever forming G,

    ⟨G, G′⟩ = Σ_{t,s} ⟨ã_t, ã′_s⟩ ⟨e_t, e′_s⟩     (T = 1: ⟨ã, ã′⟩⟨e, e′⟩),

T·T′·(p+q) operations per pair instead of p·q. Conv2d (groups 1, zero padding) is the same
with ã_t the unfolded input patch at output position t (``F.unfold``, p = C_in·k_h·k_w + 1,
q = C_out, T = H_out·W_out). A module called several times contributes all its calls as extra
positions t.

Per layer, the cheaper form is chosen automatically: the factors (ã, e) are kept when
T²(p+q) < p·q, otherwise G is materialised with one einsum from them. Elementwise-affine norm
layers y = γ ⊙ x̂ + β (BatchNorm with running statistics, LayerNorm) get their dense gradient
from the same hooks: ∂ℓ/∂γ = Σ_t e_t ⊙ x̂_t, ∂ℓ/∂β = Σ_t e_t. Every other selected parameter
(embeddings, grouped convolutions, ...) goes through :class:`PerExampleGradients`
(``torch.func``). The hooks see one ordinary batched forward/backward: in eval mode example i's
loss depends only on example i, so ∂(Σ_j ℓ_j)/∂y_i = ∂ℓ_i/∂y_i.

The result is a :class:`~influence_cli.gradients.factors.LayerGrads` (one block per layer: a factor
pair or a dense [B, D_l] tensor).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from influence_cli.gradients.factors import Block, Factors, LayerGrads
from influence_cli.gradients.layers import ParamLayout
from influence_cli.gradients.per_example import Inputs, PerExampleGradients
from influence_cli.losses import LossFn, model_outputs


@dataclass(frozen=True)
class _FactorLayer:
    """A layer handled from hooks: its position in the layout, its kind and what is selected."""

    index: int
    module: nn.Module
    kind: str  # "linear" | "conv1d" | "conv" (factors) | "norm" (elementwise affine, dense from x̂ and e)
    weight: bool
    bias: bool


_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _hook_kind(module: nn.Module) -> str | None:
    """How a module's per-example gradient is read from hooks, or ``None`` for torch.func.

    Exactly nn.Linear, transformers' ``Conv1D`` (GPT-2's linear layer, weight [in, out]), nn.Conv2d
    with groups 1 and explicit zero padding, an affine BatchNorm with running statistics (the model is
    in eval mode), or an affine nn.LayerNorm. Subclasses
    are not trusted: e.g. MultiheadAttention's ``out_proj`` is a Linear subclass whose weight is
    used without calling its forward, so a hook would never see it.
    """
    kind = type(module)
    if kind is nn.Linear:
        return "linear"
    if kind.__name__ == "Conv1D" and kind.__module__ == "transformers.pytorch_utils":  # (transformers not imported)
        return "conv1d"
    if (kind is nn.Conv2d and module.groups == 1 and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)):
        return "conv"
    if kind in _BATCH_NORMS and module.affine and module.running_mean is not None:
        return "norm"
    if kind is nn.LayerNorm and module.elementwise_affine:
        return "norm"
    return None


def _normalized(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x̂ with y = γ ⊙ x̂ + β: (x − running mean) / √(running var + ε) per channel for BatchNorm,
    (x − mean) / √(var + ε) over the normalised dims for LayerNorm."""
    if isinstance(module, _BATCH_NORMS):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - module.running_mean.view(shape)) / torch.sqrt(module.running_var.view(shape) + module.eps)
    dims = tuple(range(-len(module.normalized_shape), 0))
    mean, var = x.mean(dims, keepdim=True), x.var(dims, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + module.eps)


def _names_by_layer(layout: ParamLayout) -> list[list[tuple[str, int]]]:
    """(parameter name, size) of each layer's parameters, in layout order."""
    out: list[list[tuple[str, int]]] = [[] for _ in layout.slices]
    pos, l = 0, 0
    for name, size in zip(layout.names, layout.sizes):
        while pos >= layout.slices[l][1]:
            l += 1
        out[l].append((name, size))
        pos += size
    return out


def _sub_layout(layout: ParamLayout, layers: list[int]) -> ParamLayout:
    """The layout of only the given layers (their parameters, in order)."""
    per_layer = _names_by_layer(layout)
    names, sizes, slices, offset = [], [], [], 0
    for l in layers:
        start = offset
        for name, size in per_layer[l]:
            names.append(name)
            sizes.append(size)
            offset += size
        slices.append((start, offset))
    return ParamLayout(tuple(names), tuple(sizes), tuple(layout.layer_names[l] for l in layers), tuple(slices))


class FactorizedGradients:
    """g(z) per example as a :class:`LayerGrads`: factors for Linear/Conv2d layers, dense blocks
    from hooks for BatchNorm/LayerNorm, ``torch.func`` for every other selected parameter. Same
    call signature as :class:`PerExampleGradients`."""

    def __init__(self, model: nn.Module, layout: ParamLayout, loss_fn: LossFn) -> None:
        self.model = model.eval()
        self.layout = layout
        self.loss_fn = loss_fn
        modules = dict(model.named_modules())
        self.factor_layers: list[_FactorLayer] = []
        dense: list[int] = []
        for l, (owner, params_l) in enumerate(zip(layout.layer_names, _names_by_layer(layout))):
            module = modules.get(owner)
            params = {n.rpartition(".")[2] for n, _ in params_l}
            kind = None if module is None else _hook_kind(module)
            if kind is not None and params <= {"weight", "bias"}:
                self.factor_layers.append(_FactorLayer(l, module, kind, "weight" in params, "bias" in params))
            else:
                dense.append(l)
        self.keep_factors = False  # True: never materialise a factor layer (projection wants factors)
        self.moved_to_dense: list[str] = []  # factor layers found silent at the first batch (see _move_to_dense)
        self._set_dense(dense)

    def _set_dense(self, dense: list[int]) -> None:
        self.dense_layers = sorted(dense)
        self._dense = (PerExampleGradients(self.model, _sub_layout(self.layout, self.dense_layers), self.loss_fn)
                       if dense else None)

    def _move_to_dense(self, silent: list[int]) -> None:
        """Layers whose forward hook never fired (the module is unused, or its weight is used
        directly) go to the slower per-example path; recorded in ``moved_to_dense`` and said once."""
        names = [self.layout.layer_names[l] for l in silent]
        self.moved_to_dense = [*self.moved_to_dense, *names]
        warnings.warn(f"layers {', '.join(names)}: their modules' forward is never called (unused, or the weight "
                      "is used directly), so their gradients take the per-example path instead of the factorised "
                      "one (slower: D numbers per example instead of two small factors)", stacklevel=3)
        self.factor_layers = [f for f in self.factor_layers if f.index not in silent]
        self._set_dense(self.dense_layers + silent)

    def __call__(self, weights: dict[str, torch.Tensor], inputs: Inputs, labels: torch.Tensor) -> LayerGrads:
        blocks: list[Block | None] = [None] * len(self.layout.layer_names)
        if self.factor_layers:
            factors_all = self._factors(weights, inputs, labels)
            silent = [f.index for f, got in zip(self.factor_layers, factors_all) if got is None]
            if silent:  # never called through its forward (unused, or weight used directly): torch.func
                self._move_to_dense(silent)
                return self(weights, inputs, labels)
            for layer, factors in zip(self.factor_layers, factors_all):
                keep = isinstance(factors, torch.Tensor) or self.keep_factors or factors.factored_cheaper(
                    factors.positions, factors.positions)
                blocks[layer.index] = factors if keep else factors.materialize()
        if self._dense is not None:
            flat = self._dense(weights, inputs, labels)
            for l, (a, b) in zip(self.dense_layers, flat.layout.slices):
                blocks[l] = flat.g[:, a:b]
        return LayerGrads(blocks, self.layout)  # type: ignore[arg-type]

    def path(self, l: int, block: Block | None = None) -> str:
        """How layer l's per-example gradient is computed, as this computer's result ``block`` for it
        shows: ``torch.func``; ``norm hooks`` (a norm layer's dense block); for a Linear/Conv2d layer
        ``factorised`` (a, e kept: T²(p+q) < p·q, or ``keep_factors``) or ``materialised`` (G formed)."""
        layer = next((f for f in self.factor_layers if f.index == l), None)
        if layer is None:
            return "torch.func"
        if layer.kind == "norm":
            return "norm hooks"
        return "factorised" if self.keep_factors or isinstance(block, Factors) else "materialised"

    def _factors(self, weights: dict[str, torch.Tensor], inputs: Inputs, labels: torch.Tensor
                 ) -> list[Block | None]:
        """One batched forward/backward recording each hooked layer's inputs and output gradients:
        factors, a dense block for norm layers, ``None`` for a layer whose forward was never called."""
        calls: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {i: [] for i in range(len(self.factor_layers))}

        def hook(i: int):
            norm = self.factor_layers[i].kind == "norm"

            def record(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
                # e = ∂ℓ/∂δ for a zero δ added to the output: correct even when the output is
                # later modified in place (ReLU(inplace=True)), and a graph even when nothing
                # upstream requires a gradient.
                delta = torch.zeros_like(out, requires_grad=True)
                x = args[0].detach()
                calls[i].append((_normalized(module, x) if norm else x, delta))
                return out + delta
            return record

        handles = [f.module.register_forward_hook(hook(i)) for i, f in enumerate(self.factor_layers)]
        try:
            with torch.enable_grad():
                if isinstance(inputs, dict):
                    out = functional_call(self.model, weights, args=(), kwargs=inputs)
                else:
                    out = functional_call(self.model, weights, (inputs,))
                loss = self.loss_fn(model_outputs(out), labels).sum()
                outs = [o for i in calls for _, o in calls[i]]
                grads = torch.autograd.grad(loss, outs, allow_unused=True) if outs else ()
        finally:
            for h in handles:
                h.remove()
        grads_iter = iter(grads)
        per_layer = [[(x, o, next(grads_iter)) for x, o in calls[i]] for i in range(len(self.factor_layers))]
        return [(self._norm_block if f.kind == "norm" else self._layer_factors)(f, c, len(labels))
                for f, c in zip(self.factor_layers, per_layer)]

    @staticmethod
    def _norm_block(layer: _FactorLayer, calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
                    batch: int) -> torch.Tensor | None:
        """[B, D_l] for y = γ ⊙ x̂ + β: ∂ℓ/∂γ = Σ e ⊙ x̂ and ∂ℓ/∂β = Σ e over the positions
        (all dims but batch and channel for BatchNorm; the leading dims for LayerNorm), summed
        over calls."""
        if not calls:
            return None
        m = layer.module
        gamma = beta = None
        for xhat, _, grad in calls:
            if grad is None:
                continue
            if isinstance(m, _BATCH_NORMS):
                dims = tuple(range(2, grad.dim()))
            else:
                dims = tuple(range(1, grad.dim() - len(m.normalized_shape)))
            g = (grad * xhat).sum(dims).reshape(batch, -1) if dims else (grad * xhat).reshape(batch, -1)
            b = grad.sum(dims).reshape(batch, -1) if dims else grad.reshape(batch, -1)
            gamma, beta = (g, b) if gamma is None else (gamma + g, beta + b)
        if gamma is None:
            gamma = beta = m.weight.new_zeros(batch, m.weight.numel())
        return torch.cat(([gamma] if layer.weight else []) + ([beta] if layer.bias else []), dim=1)

    @staticmethod
    def _layer_factors(layer: _FactorLayer, calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
                       batch: int) -> Factors | None:
        """(a, e) of one layer, positions of all its calls concatenated."""
        m = layer.module
        if not calls:
            return None
        a_parts, e_parts = [], []
        for x, out, grad in calls:
            if grad is None:  # the loss does not depend on this call
                continue
            if layer.kind == "conv":
                a = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride).transpose(1, 2)
                e = grad.flatten(2).transpose(1, 2)
            else:
                a = x.reshape(batch, -1, x.shape[-1])
                e = grad.reshape(batch, -1, grad.shape[-1])
            a_parts.append(a if layer.weight else a[..., :0])
            e_parts.append(e.to(a.dtype))
        transposed = layer.kind == "conv1d"
        if not a_parts:
            w = m.weight.T if transposed else m.weight  # [out, in…]
            d = w[0].numel() if layer.weight else 0
            return Factors(w.new_zeros(batch, 0, d), w.new_zeros(batch, 0, w.shape[0]), layer.bias, transposed)
        cat = lambda parts: parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # noqa: E731
        return Factors(cat(a_parts), cat(e_parts), layer.bias, transposed)
