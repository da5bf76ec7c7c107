"""Factorised (ghost) products against materialised torch.func gradients, in float64.

:class:`PerExampleGradients` is itself tested against explicit per-example autograd loops, so
agreement to ~1e-12 here means the factorised path is exact for every block kind: Linear
(with and without a sequence dimension, a module called twice), Conv2d via unfold, bias-only
and weight-only selections, BatchNorm (running statistics) and LayerNorm from hooks, and
torch.func fallbacks (embeddings, grouped convolutions, layers whose weight is used without
calling their forward).
"""

from __future__ import annotations

import pytest
import torch
from fixtures.tiny_models import build_bert, build_cnn, build_mlp
from torch import nn

from influence_cli.gradients.factorized import FactorizedGradients
from influence_cli.gradients.factors import Factors, LayerGrads
from influence_cli.gradients.layers import select_parameters
from influence_cli.gradients.per_example import PerExampleGradients
from influence_cli.losses import BUILTIN_LOSSES

ATOL = 1e-12
CE = BUILTIN_LOSSES["cross_entropy"]


class SeqModel(nn.Module):
    """Wide Linear layers over a sequence (factors kept, T > 1), one of them called twice, then LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(24, 64)
        self.shared = nn.Linear(64, 64)
        self.norm = nn.LayerNorm(64)
        self.head = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.shared(h))
        h = torch.tanh(self.shared(h[:, :2]))  # second call, fewer positions
        return self.head(self.norm(h).mean(1))


class WideConv(nn.Module):
    """A conv whose factors are kept (few output positions, many channels), stride and padding."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.grouped = nn.Conv2d(16, 16, 1, groups=2)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.grouped(torch.relu(self.conv(x))).mean((2, 3)))


class InPlace(nn.Module):
    """In-place activations after hooked layers, and a first hooked layer that is not the first module."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc1 = nn.Linear(16, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.relu(self.bn(self.conv(x)), inplace=True)
        h = nn.functional.adaptive_avg_pool2d(h, 2).flatten(1)
        return self.fc2(nn.functional.relu(self.fc1(h), inplace=True))


class GPT2Style(nn.Module):
    """transformers' ``Conv1D`` (weight [in, out]) on a sequence, then on the mean, with a partial
    selection possible (bias only)."""

    def __init__(self) -> None:
        super().__init__()
        from transformers.pytorch_utils import Conv1D

        self.c_attn = Conv1D(6, 5)   # nf = out, nx = in
        self.c_proj = Conv1D(3, 6)
        self.head = Conv1D(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.c_attn(x))             # [B, T, 6]
        return self.head(torch.tanh(self.c_proj(h)).mean(1))


def _pair(model: nn.Module, layers: list[str] | None, make_x) -> tuple:
    model = model.double().eval()
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    layout = select_parameters(model, layers)
    ref, fac = PerExampleGradients(model, layout, CE), FactorizedGradients(model, layout, CE)
    out = []
    for b in (5, 4):
        x, y = make_x(b), torch.randint(0, 3, (b,))
        out.append((ref(weights, x, y), fac(weights, x, y)))
    return fac, out


def _images(c: int, h: int):
    return lambda b: torch.randn(b, c, h, h, dtype=torch.float64)


CASES = {
    "mlp": (build_mlp, None, lambda b: torch.randn(b, 6, dtype=torch.float64)),
    "cnn-bn": (build_cnn, None, _images(1, 8)),
    "cnn-partial": (build_cnn, ["conv.weight", "fc.bias", "bn"], _images(1, 8)),
    "sequence": (SeqModel, None, lambda b: torch.randn(b, 3, 24, dtype=torch.float64)),
    "wide-conv": (WideConv, None, _images(8, 2)),
    "inplace": (InPlace, None, _images(1, 4)),
    "inplace-partial": (InPlace, ["bn", "fc2"], _images(1, 4)),
    "gpt2-conv1d": (GPT2Style, None, lambda b: torch.randn(b, 4, 5, dtype=torch.float64)),
    "gpt2-conv1d-partial": (GPT2Style, ["c_attn.weight", "c_proj.bias", "head"],
                            lambda b: torch.randn(b, 4, 5, dtype=torch.float64)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_factorized_matches_materialised(case: str) -> None:
    torch.manual_seed(0)
    build, layers, make_x = CASES[case]
    fac, [(r1, f1), (r2, f2)] = _pair(build(), layers, make_x)
    assert torch.allclose(f1.flat().g, r1.g, atol=ATOL)
    assert torch.allclose(f1.layer_sq_norms(), r1.layer_sq_norms(), atol=ATOL)
    assert torch.allclose(f1.dot(f2), r1.dot(r2), atol=ATOL)
    w = torch.rand(len(r1), len(r1.layout.slices), dtype=torch.float64)
    assert torch.allclose(f1.scaled(w).dot(f2), r1.scaled(w).dot(r2), atol=ATOL)
    both, ref_both = LayerGrads.cat([f1, f2]), r1.cat([r1, r2])
    assert torch.allclose(both.dot(f1), ref_both.dot(r1), atol=ATOL)
    assert torch.allclose(both.layer_sq_norms(), ref_both.layer_sq_norms(), atol=ATOL)
    assert fac.factor_layers, "no layer took the factorised path"


def test_factors_kept_only_when_cheaper() -> None:
    torch.manual_seed(0)
    _, [(_, seq), _] = _pair(SeqModel(), None, CASES["sequence"][2])
    kinds = [type(b).__name__ for b in seq.blocks]
    assert kinds == ["Factors", "Factors", "Tensor", "Factors"]  # LayerNorm: a dense block from x̂ and e
    assert seq.blocks[1].positions == 5  # 3 + 2 positions from the two calls of `shared`
    fac, [(_, cnn), _] = _pair(build_cnn(), None, _images(1, 8))
    assert isinstance(cnn.blocks[0], torch.Tensor)  # 64 positions, p·q = 40: materialised
    assert fac.dense_layers == [] and [f.kind for f in fac.factor_layers] == ["conv", "norm", "linear"]


def test_bert_sequence_layers_and_fallbacks() -> None:
    torch.manual_seed(0)

    def tokens(b: int) -> dict[str, torch.Tensor]:
        mask = torch.ones(b, 7, dtype=torch.long)
        mask[0, 5:] = 0
        return {"input_ids": torch.randint(0, 20, (b, 7)), "attention_mask": mask}

    fac, [(r1, f1), (r2, f2)] = _pair(build_bert(), None, tokens)
    assert fac.dense_layers and fac.factor_layers
    assert torch.allclose(f1.dot(f2), r1.dot(r2), atol=ATOL)
    assert torch.allclose(f1.layer_sq_norms(), r1.layer_sq_norms(), atol=ATOL)


class Unused(nn.Module):
    """``unused`` is never called; ``direct``'s weight is used without calling its forward; the
    attention's ``out_proj`` is a Linear subclass used the same way."""

    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(4, 3)
        self.unused = nn.Linear(4, 4)
        self.direct = nn.Linear(4, 4)
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(nn.functional.linear(x, self.direct.weight, self.direct.bias))
        h = self.attn(h[:, None], h[:, None], h[:, None], need_weights=False)[0][:, 0]
        return self.used(h)


def test_layers_not_called_through_forward_use_torch_func() -> None:
    torch.manual_seed(0)
    model = Unused().double().eval()
    layout = select_parameters(model, None)
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(3, 4, dtype=torch.float64), torch.tensor([0, 2, 1])
    fac = FactorizedGradients(model, layout, CE)
    with pytest.warns(UserWarning, match="layers unused, direct: their modules' forward is never called") as said:
        got = fac(weights, x, y)
    ours = [w for w in said if "forward is never called" in str(w.message)]
    assert len(ours) == 1 and fac.moved_to_dense == ["unused", "direct"]  # recorded, and said once
    ref = PerExampleGradients(model, layout, CE)(weights, x, y)
    assert [layout.layer_names[f.index] for f in fac.factor_layers] == ["used"]
    assert torch.allclose(got.layer_sq_norms(), ref.layer_sq_norms(), atol=ATOL)
    assert torch.allclose(got.dot(got), ref.dot(ref), atol=ATOL)
    assert float(got.layer_sq_norms()[:, layout.layer_names.index("unused")].abs().max()) == 0.0


def test_sequence_dot_chunks_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    a, e = torch.randn(6, 3, 30, dtype=torch.float64), torch.randn(6, 3, 20, dtype=torch.float64)
    f = Factors(a, e, bias=True)
    whole = f.dot(f)
    monkeypatch.setattr("influence_cli.gradients.factors._CHUNK_ELEMENTS", 10)
    assert torch.allclose(f.dot(f), whole, atol=ATOL)
    assert torch.allclose(whole, f.materialize() @ f.materialize().T, atol=ATOL)


def test_out_of_memory_halves_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA OOM retry logic, exercised on the CPU: batches above 2 examples 'run out of memory'."""
    from influence_cli.errors import GradientError
    from influence_cli.gradients.per_example import HalveOnOutOfMemory

    torch.manual_seed(0)
    model = build_mlp().double().eval()
    layout = select_parameters(model, None)
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    inner = FactorizedGradients(model, layout, CE)
    calls = []

    def flaky(w, x, y):
        calls.append(len(y))
        if len(y) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return inner(w, x, y)

    x, y = torch.randn(5, 6, dtype=torch.float64), torch.randint(0, 3, (5,))
    halving = HalveOnOutOfMemory(flaky)
    with pytest.warns(RuntimeWarning, match="batch of 5"):
        got = halving(weights, x, y)
    assert torch.allclose(got.dot(got), inner(weights, x, y).dot(inner(weights, x, y)), atol=ATOL)
    assert calls[:2] == [5, 2] and halving.max_batch == 2
    calls.clear()
    halving(weights, x, y)  # later batches start at the size that fitted
    assert calls == [2, 2, 1]

    def always(w, x, y):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    with pytest.warns(RuntimeWarning), pytest.raises(GradientError, match="single example"):
        HalveOnOutOfMemory(always)(weights, x, y)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_factorized_on_cuda_matches_cpu() -> None:
    torch.manual_seed(0)
    model = build_cnn().double().eval()
    layout = select_parameters(model, None)
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(5, 1, 8, 8, dtype=torch.float64), torch.randint(0, 3, (5,))
    cpu = FactorizedGradients(model, layout, CE)(weights, x, y)
    gpu_model = model.cuda()
    gpu = FactorizedGradients(gpu_model, layout, CE)({k: v.cuda() for k, v in weights.items()}, x.cuda(), y.cuda())
    assert torch.allclose(gpu.dot(gpu).cpu(), cpu.dot(cpu), atol=ATOL)


def test_bfloat16_run_is_close_and_accumulates_in_float32(tiny_recipe) -> None:
    from influence_cli import load_recipe, score

    run = tiny_recipe("cnn", n_train=8, n_test=3)
    exact = score(load_recipe(run.recipe_path), k=3, keep_matrix=True).passes
    low = score(load_recipe(run.rewrite(dtype="bfloat16")), k=3, keep_matrix=True).passes
    assert low.matrix.dtype == torch.float32 and low.self_influence.dtype == torch.float32
    scale = exact.matrix.abs().max()
    assert float((low.matrix.double() - exact.matrix).abs().max() / scale) < 5e-2
    assert float(((low.self_influence.double() - exact.self_influence) / exact.self_influence).abs().max()) < 5e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tf32_switch_follows_the_recipe(tiny_recipe) -> None:
    from influence_cli import load_recipe
    from influence_cli.session import Session

    run = tiny_recipe("mlp", device="cuda", dtype="float32", tf32=True)
    Session.from_recipe(load_recipe(run.recipe_path))
    assert torch.backends.cuda.matmul.allow_tf32
    Session.from_recipe(load_recipe(run.rewrite(tf32=False)))
    assert not torch.backends.cuda.matmul.allow_tf32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_scores_match_the_cpu(tiny_recipe) -> None:
    from influence_cli import load_recipe, score

    run = tiny_recipe("cnn", n_train=8, n_test=3, dtype="float64")
    cpu = score(load_recipe(run.recipe_path), k=3, keep_matrix=True).passes
    gpu = score(load_recipe(run.rewrite(device="cuda")), k=3, keep_matrix=True).passes  # pinned, non-blocking copies
    torch.testing.assert_close(gpu.matrix, cpu.matrix, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gpu.self_influence, cpu.self_influence, rtol=1e-9, atol=1e-12)
