"""EK-FAC against Kronfluence (a test-only dependency; skipped without it) on the same float64 MLP,
the same sampled labels (Kronfluence's task draws them from the labels we sampled) and the same
damping heuristic (0.1 × mean eigenvalue)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from fixtures.tiny_models import build_mlp
from influence_cli.curvature.ekfac import fit_ekfac, sampled_labels
from influence_cli.gradients.layers import select_parameters
from influence_cli.gradients.per_example import PerExampleGradients

kronfluence = pytest.importorskip("kronfluence")
from kronfluence.analyzer import Analyzer, prepare_model  # noqa: E402
from kronfluence.arguments import FactorArguments, ScoreArguments  # noqa: E402
from kronfluence.task import Task  # noqa: E402

F64 = torch.float64


class _Classification(Task):
    """Summed cross-entropy; ``sample=True`` reads the label influence-cli sampled for that example: its
    first draw during Kronfluence's first sampled pass (covariances), its second draw afterwards
    (eigenvalue correction), as Kronfluence's own sampling would draw afresh."""

    def __init__(self, draws: tuple[torch.Tensor, torch.Tensor]) -> None:
        super().__init__()
        self.draws, self.seen = draws, 0

    def compute_train_loss(self, batch, model: nn.Module, sample: bool = False) -> torch.Tensor:
        x, y, idx = batch
        if sample:
            y = self.draws[min(self.seen // len(self.draws[0]), 1)][idx]
            self.seen += len(idx)
        return F.cross_entropy(model(x), y, reduction="sum")

    def compute_measurement(self, batch, model: nn.Module) -> torch.Tensor:
        return self.compute_train_loss(batch, model)


def _loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


@pytest.mark.slow  # Kronfluence's analyzer writes factors and scores to disk: ~5 s
def test_ekfac_agrees_with_kronfluence(tmp_path):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = build_mlp().double().eval()
    x, xt = torch.randn(12, 6, generator=gen, dtype=F64), torch.randn(3, 6, generator=gen, dtype=F64)
    y, yt = torch.randint(0, 3, (12,), generator=gen), torch.randint(0, 3, (3,), generator=gen)
    layout = select_parameters(model, None)
    grads = PerExampleGradients(model, layout, _loss)
    weights = {k: v.detach().clone() for k, v in model.named_parameters()}
    ek = fit_ekfac(model, weights, layout, _loss, lambda: [(i, x[i:i + 4]) for i in (0, 4, 8)], seed=1)
    ours = ek.precondition(grads(weights, xt, yt)).g @ grads(weights, x, y).g.T

    draws = tuple(torch.cat([sampled_labels(model, weights, x[i:i + 4], 1, draw, i) for i in (0, 4, 8)])
                  for draw in (0, 1))
    task = _Classification(draws)  # type: ignore[arg-type]
    analyzer = Analyzer("ekfac", prepare_model(model, task), task, cpu=True, output_dir=str(tmp_path),
                        disable_tqdm=True)
    dtypes = dict(activation_covariance_dtype=F64, gradient_covariance_dtype=F64, per_sample_gradient_dtype=F64,
                  lambda_dtype=F64)
    analyzer.fit_all_factors("f", TensorDataset(x, y, torch.arange(12)), per_device_batch_size=4,
                             factor_args=FactorArguments(strategy="ekfac", **dtypes), overwrite_output_dir=True)
    analyzer.compute_pairwise_scores("s", "f", TensorDataset(xt, yt, torch.arange(3)),
                                     TensorDataset(x, y, torch.arange(12)), per_device_query_batch_size=3,
                                     per_device_train_batch_size=4, overwrite_output_dir=True,
                                     score_args=ScoreArguments(damping_factor=None, score_dtype=F64,
                                                               per_sample_gradient_dtype=F64, precondition_dtype=F64))
    theirs = analyzer.load_pairwise_scores("s")["all_modules"].to(F64)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)  # measured: 2e-13 on scores of ~90
