"""EK-FAC (:mod:`influence_cli.curvature.ekfac`) against explicit float64 matrices: the per-layer
block-diagonal curvature (Q_S ⊗ Q_A) diag(Λ*) (Q_S ⊗ Q_A)ᵀ + λI built and inverted densely, from
activations and pre-activation gradients computed here with autograd, not with the library."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fixtures.tiny_models import build_cnn, build_mlp
from influence_cli import Session, load_recipe, mislabel_detect, score
from influence_cli.audits.mislabel import compute_signals
from influence_cli import engine
from influence_cli.audits.target import target_identify
from influence_cli.curvature.ekfac import DAMPING_FRACTION, EKFAC, fit_ekfac, sampled_labels
from influence_cli.errors import ParameterError
from influence_cli.gradients.layers import select_parameters
from influence_cli.gradients.per_example import PerExampleGradients
from influence_cli.methods import MislabelMethod
from influence_cli.recipe import CurvatureSpec

SEED = 3
SAME_COUNTS_SEED = 0  # its two draws of 9 labels have equal class counts (asserted)


def _loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


Draws = tuple[torch.Tensor, torch.Tensor]


def _draws(model: nn.Module, x: torch.Tensor, batch_size: int, seed: int) -> Draws:
    """The labels the fit sampled for the inputs ``x`` in batches of ``batch_size``: draw 0 (factors A, S)
    and draw 1 (eigenvalue correction Λ*), each batch seeded by its first index."""
    weights = {k: v.detach() for k, v in model.named_parameters()}
    return tuple(torch.cat([sampled_labels(model, weights, x[i:i + batch_size], seed, draw, i)  # type: ignore[return-value]
                            for i in range(0, len(x), batch_size)]) for draw in (0, 1))


def _fit(model: nn.Module, x: torch.Tensor, damping: float | None = None, seed: int = SEED
         ) -> tuple[EKFAC, PerExampleGradients, Draws]:
    layout = select_parameters(model, None)
    grads = PerExampleGradients(model, layout, _loss)
    weights = dict(model.named_parameters())
    ek = fit_ekfac(model, {k: v.detach() for k, v in weights.items()}, layout, _loss,
                   lambda: [(i, x[i:i + 5]) for i in range(0, len(x), 5)], damping=damping, seed=seed)
    return ek, grads, _draws(model, x, 5, seed)


def _layer_factors(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(ã [N, p], e [N, q]) per Linear layer, e = ∂ℓ/∂(pre-activation) by autograd."""
    pre, acts, h = [], [], x.double()
    for m in model:
        if isinstance(m, nn.Linear):
            acts.append(torch.cat([h, torch.ones_like(h[:, :1])], dim=1))
            h = F.linear(h, m.weight.detach(), m.bias.detach()).requires_grad_()
            pre.append(h)
        else:
            h = m(h)
    errors = torch.autograd.grad(_loss(h, y).sum(), pre)
    return list(zip(acts, errors))


def _outer(a: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """vec(G_i) = vec(e_i ã_iᵀ), row-major: [N, q·p]."""
    return (e[:, :, None] * a[:, None, :]).flatten(1)


def _explicit_curvature(a: torch.Tensor, e: torch.Tensor, damping: float | None = None,
                        vec_g: torch.Tensor | None = None) -> torch.Tensor:
    """U diag(Λ*) Uᵀ + λI, U = Q_S ⊗ Q_A (A, S from the rows of ``a``, ``e``), Λ* = E[(Uᵀ vec G_i)²]
    (G_i = e_i ã_iᵀ unless ``vec_g`` gives them), λ = ``damping`` or DAMPING_FRACTION × mean Λ*."""
    qa = torch.linalg.eigh(a.T @ a / len(a)).eigenvectors
    qs = torch.linalg.eigh(e.T @ e / len(e)).eigenvectors
    u = torch.kron(qs, qa)
    lam = ((_outer(a, e) if vec_g is None else vec_g) @ u).pow(2).mean(0)
    damping = DAMPING_FRACTION * lam.mean() if damping is None else damping
    return u @ torch.diag(lam) @ u.T + damping * torch.eye(len(u), dtype=u.dtype)


Pair = tuple[torch.Tensor, torch.Tensor]


def _explicit_scores(model: nn.Sequential, x: torch.Tensor, draws: Draws, train: Pair, test: Pair,
                     damping: float | None = None) -> torch.Tensor:
    """[M, N]: Σ_l vec(G′_l)ᵀ (EK-FAC block_l + λ_l I)⁻¹ vec(G_l), the curvature fitted on inputs ``x``
    (factors A, S at the first sampled labels, Λ* at the second, fresh draw), G at the ``train``
    examples, G′ at the ``test`` examples."""
    want = torch.zeros(len(test[1]), len(train[1]), dtype=torch.float64)
    for (a, e), (a2, e2), (at, et), (ay, ey) in zip(
            _layer_factors(model, x, draws[0]), _layer_factors(model, x, draws[1]),
            _layer_factors(model, *test), _layer_factors(model, *train)):
        curv = _explicit_curvature(a, e, damping, vec_g=_outer(a2, e2))
        want += _outer(at, et) @ torch.linalg.solve(curv, _outer(ay, ey).T)
    return want


def _inputs(n: int, d: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(n, d, generator=gen, dtype=torch.float64)


def test_mlp_equals_the_explicit_block_diagonal_inverse():
    """Σ_l vec(G′_l)ᵀ (EK-FAC block_l + λ_l I)⁻¹ vec(G_l) for train × test pairs, to 1e-10."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = build_mlp().double()
    x, xt = _inputs(12, 6, gen), _inputs(3, 6, gen)
    y, yt = torch.randint(0, 3, (12,), generator=gen), torch.randint(0, 3, (3,), generator=gen)
    ek, grads, draws = _fit(model, x)
    weights = {k: v.detach() for k, v in model.named_parameters()}
    got = ek.precondition(grads(weights, xt, yt)).g @ grads(weights, x, y).g.T
    want = _explicit_scores(model, x, draws, (x, y), (xt, yt))
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("damping", [None, 0.3])
def test_score_ekfac_is_the_final_checkpoints_explicit_influence(tiny_recipe, damping):
    """``score(recipe, method="ekfac")``: the final checkpoint only, factorised training gradients,
    batches of 4, the recipe's ``curvature.damping``."""
    run = tiny_recipe("mlp", n_train=8, n_test=3, learning_rates=(0.4, 0.1), seed=2,
                      curvature=None if damping is None else {"damping": damping})
    result = score(load_recipe(run.recipe_path), method="ekfac", keep_matrix=True, k=2)
    model = run.factory().double()
    model.load_state_dict(run.states[-1])
    draws = _draws(model, run.train[0].double(), load_recipe(run.recipe_path).batch_size, 0)  # score's fit
    want = _explicit_scores(model, run.train[0], draws, run.train, run.test, damping)
    torch.testing.assert_close(result.matrix, want, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(result.proponents[0][:, 0], want.max(1).values, rtol=1e-8, atol=1e-10)


def test_single_linear_layer_equals_the_exact_damped_gauss_newton_inverse():
    """One Linear layer fed one input (a Kronecker-exact curvature): the EK-FAC block is
    (E_i[vec G_i vec G_iᵀ] + λI)⁻¹ with G_i at the sampled labels. With one input, G_i = e(ŷ_i) aᵀ
    depends on the draw only through its class counts; the seed is one whose two draws (factors,
    correction) have equal counts, so both describe the same curvature."""
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 3)).double()
    x = _inputs(1, 4, gen).expand(9, 4).clone()
    ek, grads, draws = _fit(model, x, damping=0.05, seed=SAME_COUNTS_SEED)
    assert draws[0].bincount(minlength=3).tolist() == draws[1].bincount(minlength=3).tolist()
    (a, e), = _layer_factors(model, x, draws[1])
    exact = _outer(a, e).T @ _outer(a, e) / len(x) + 0.05 * torch.eye(15, dtype=torch.float64)
    weights = {k: v.detach() for k, v in model.named_parameters()}
    g = grads(weights, _inputs(5, 4, gen), torch.arange(5) % 3)
    (at, et), = _layer_factors(model, _inputs(5, 4, torch.Generator().manual_seed(7)), torch.arange(5) % 3)
    flat = ek.blocks[0].to_flat(_outer(at, et).reshape(5, 3, 5))  # type: ignore[union-attr]
    torch.testing.assert_close(ek.precondition(type(g)(flat, g.layout)).g,
                               ek.blocks[0].to_flat(torch.linalg.solve(exact, _outer(at, et).T).T.reshape(5, 3, 5)),
                               rtol=1e-8, atol=1e-10)


def test_target_identify_ekfac_ranks_with_the_scores_at_the_predictions(tiny_recipe):
    """target-identify's proponents under ``ekfac`` are ``score``'s at the predicted labels (one fit)."""
    run = tiny_recipe("mlp", n_train=8, n_test=4, learning_rates=(0.4, 0.1), seed=5)
    target = target_identify(load_recipe(run.recipe_path), method="ekfac", k=2)
    scores = score(target.session, method="ekfac", test_labels="predicted", k=2)
    torch.testing.assert_close(target.passes.proponents[0], scores.proponents[0], rtol=1e-12, atol=1e-12)


def test_mislabel_ekfac_is_the_explicit_self_influence(tiny_recipe):
    """``mislabel-detect --method ekfac`` scores g(z)ᵀ(G + λI)⁻¹g(z) at the final checkpoint."""
    run = tiny_recipe("mlp", n_train=8, n_test=2, learning_rates=(0.4, 0.1), seed=4)
    session = Session.from_recipe(load_recipe(run.recipe_path))
    signals, _, _, _ = compute_signals(session, {MislabelMethod.EKFAC})
    model = run.factory().double()
    model.load_state_dict(run.states[-1])
    draws = _draws(model, run.train[0].double(), session.recipe.batch_size, 0)
    want = _explicit_scores(model, run.train[0], draws, run.train, run.train)
    torch.testing.assert_close(signals[MislabelMethod.EKFAC], want.diagonal(), rtol=1e-8, atol=1e-10)


def _cnn_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Per-example gradients by autograd, one example at a time: [conv [N, C·10], bn [N, 2C], fc [N, K·(4C+1)]],
    each Linear/Conv2d block as vec [W | b] row-major."""
    rows = []
    for xi, yi in zip(x, y):
        g = dict(zip([n for n, _ in model.named_parameters()],
                     torch.autograd.grad(_loss(model(xi[None]), yi[None]).sum(), list(model.parameters()))))
        rows.append([torch.cat([g[f"{m}.weight"].flatten(1), g[f"{m}.bias"][:, None]], 1).flatten() if m != "bn" else
                     torch.cat([g["bn.weight"], g["bn.bias"]]) for m in ("conv", "bn", "fc")])
    return [torch.stack(col) for col in zip(*rows)]


def _cnn_factors(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(ã, e) rows of conv (unfolded patches, every output position) and fc."""
    conv = F.conv2d(x, model.conv.weight.detach(), model.conv.bias.detach(), padding=1).requires_grad_()
    h = model.pool(torch.relu(model.bn(conv))).flatten(1)
    logits = F.linear(h, model.fc.weight.detach(), model.fc.bias.detach())
    e_conv, e_fc = torch.autograd.grad(_loss(logits, y).sum(), [conv, logits])
    h = h.detach()
    patches = F.unfold(x, 3, padding=1).transpose(1, 2).flatten(0, 1)
    ones = lambda t: torch.cat([t, torch.ones_like(t[:, :1])], dim=1)  # noqa: E731
    return [(ones(patches), e_conv.flatten(2).transpose(1, 2).flatten(0, 1)), (ones(h), e_fc)]


def test_conv2d_is_kronecker_factored_and_batchnorm_falls_back_to_the_diagonal():
    """SmallCNN: conv (patches × positions) and fc get EK-FAC blocks, BatchNorm the damped diagonal
    g / (E[g²] + λ); scores equal the explicit block-diagonal inverse."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(2)
    model = build_cnn().double().eval()
    x, xt = (torch.randn(n, 1, 8, 8, generator=gen, dtype=torch.float64) for n in (10, 2))
    y, yt = torch.randint(0, 3, (10,), generator=gen), torch.randint(0, 3, (2,), generator=gen)
    ek, grads, draws = _fit(model, x)
    assert [type(b).__name__ for b in ek.blocks] == ["KroneckerBlock", "DiagonalBlock", "KroneckerBlock"]
    weights = {k: v.detach() for k, v in model.named_parameters()}
    got = ek.precondition(grads(weights, xt, yt)).g @ grads(weights, x, y).g.T
    fit = _cnn_grads(model, x, draws[1])
    (a_conv, e_conv), (a_fc, e_fc) = _cnn_factors(model, x, draws[0])
    diag = fit[1].pow(2).mean(0)
    curvatures = [_explicit_curvature(a_conv, e_conv, vec_g=fit[0]),
                  torch.diag(diag + DAMPING_FRACTION * diag.mean()), _explicit_curvature(a_fc, e_fc, vec_g=fit[2])]
    want = sum(t @ torch.linalg.solve(c, g.T) for t, c, g in zip(_cnn_grads(model, xt, yt), curvatures,
                                                                  _cnn_grads(model, x, y)))
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def _run_model(run, c: int) -> nn.Module:
    model = run.factory().double()
    model.load_state_dict(run.states[c])
    return model


def test_checkpoints_all_sums_every_checkpoints_influence_weighted_by_its_rate(tiny_recipe):
    """``curvature: {checkpoints: all}``: Σ_c η_c g′_cᵀ(G_c + λI)⁻¹g_c, one fit per checkpoint."""
    rates = (0.4, 0.1, 0.05)
    run = tiny_recipe("mlp", n_train=8, n_test=3, learning_rates=rates, seed=6, curvature={"checkpoints": "all"})
    result = score(load_recipe(run.recipe_path), method="ekfac", keep_matrix=True, k=2)
    bs = result.session.recipe.batch_size
    want = sum(lr * _explicit_scores(_run_model(run, c), run.train[0], _draws(_run_model(run, c), run.train[0].double(),
                                                                                bs, 0), run.train, run.test)
               for c, lr in enumerate(rates))
    torch.testing.assert_close(result.matrix, want, rtol=1e-8, atol=1e-10)


def test_renormalize_is_the_cosine_in_the_curvature_metric(tiny_recipe):
    """``curvature: {renormalize: true}``: g′ᵀPg / √(g′ᵀPg′ · gᵀPg) at the final checkpoint (GAS-style);
    mislabel-detect refuses it (every self-influence would be 1)."""
    run = tiny_recipe("mlp", n_train=8, n_test=3, learning_rates=(0.4, 0.1), seed=7, curvature={"renormalize": True})
    result = score(load_recipe(run.recipe_path), method="ekfac", keep_matrix=True, k=2)
    model = _run_model(run, -1)
    draws = _draws(model, run.train[0].double(), result.session.recipe.batch_size, 0)
    raw = _explicit_scores(model, run.train[0], draws, run.train, run.test)
    test_self = _explicit_scores(model, run.train[0], draws, run.test, run.test).diagonal()
    train_self = _explicit_scores(model, run.train[0], draws, run.train, run.train).diagonal()
    torch.testing.assert_close(result.matrix, raw / (test_self[:, None] * train_self[None, :]).sqrt(),
                               rtol=1e-8, atol=1e-10)
    assert result.matrix.abs().max() <= 1 + 1e-12
    with pytest.raises(ParameterError, match="renormalize"):
        compute_signals(result.session, {MislabelMethod.EKFAC})


@pytest.mark.parametrize("method", ["ekfac", "arnoldi"])
def test_a_fit_is_stored_and_read_back_and_a_damaged_one_is_refitted(tiny_recipe, monkeypatch, method):
    """With ``cache_dir`` the fit lands in the gradient store: a second run reads it (no refit) with identical
    scores; other settings fit anew; a damaged fit file is refitted with a warning naming it."""
    run = tiny_recipe("mlp", n_train=8, n_test=3, learning_rates=(0.4, 0.1), seed=8, cache_dir="grads",
                      curvature={"eigenpairs": 3})
    first = score(load_recipe(run.recipe_path), method=method, keep_matrix=True, k=2)
    fits = sorted((run.recipe_path.parent / "grads").rglob("curvature-*.safetensors"))
    assert len(fits) == 1
    calls = []
    monkeypatch.setattr(engine, "_fit", lambda *a: calls.append(a) or pytest.fail("refitted"))
    again = score(load_recipe(run.recipe_path), method=method, keep_matrix=True, k=2)
    assert not calls
    torch.testing.assert_close(again.matrix, first.matrix, rtol=1e-12, atol=1e-12)
    monkeypatch.undo()
    fits[0].write_bytes(fits[0].read_bytes()[:-7] + b"garbage")
    with pytest.warns(UserWarning, match="damaged curvature fit"):
        repaired = score(load_recipe(run.recipe_path), method=method, keep_matrix=True, k=2)
    torch.testing.assert_close(repaired.matrix, first.matrix, rtol=1e-12, atol=1e-12)
    other = load_recipe(run.recipe_path).model_copy(update={"curvature": CurvatureSpec(eigenpairs=3, seed=1)})
    score(other, method=method, k=2)
    assert len(list((run.recipe_path.parent / "grads").rglob("curvature-*.safetensors"))) == 2


def test_gpt2_conv1d_layers_are_kronecker_factored_like_their_linear_twins():
    """transformers' Conv1D (weight [in, out]) gets a Kronecker block, not the diagonal fallback; a model
    of Conv1D layers scores exactly like the same model built from nn.Linear with the transposed weights."""
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(4)
    conv = nn.Sequential(Conv1D(5, 6), nn.Tanh(), Conv1D(3, 5)).double()
    linear = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    with torch.no_grad():
        for c, lin in ((conv[0], linear[0]), (conv[2], linear[2])):
            lin.weight.copy_(c.weight.T)
            lin.bias.copy_(c.bias)
    x, xt = _inputs(10, 6, gen), _inputs(3, 6, gen)
    y, yt = torch.randint(0, 3, (10,), generator=gen), torch.randint(0, 3, (3,), generator=gen)
    scores = []
    for model in (conv, linear):
        ek, grads, _ = _fit(model, x)
        assert [type(b).__name__ for b in ek.blocks] == ["KroneckerBlock", "KroneckerBlock"]
        weights = {k: v.detach() for k, v in model.named_parameters()}
        scores.append(ek.precondition(grads(weights, xt, yt)).g @ grads(weights, x, y).g.T)
    torch.testing.assert_close(scores[0], scores[1], rtol=1e-10, atol=1e-10)


def test_the_fit_is_its_own_progress_task_and_renormalised_self_influence_is_refused_before_any_work(tiny_recipe):
    """``score`` reports the curvature fit as a task of its own (not inside "test gradients"), once per
    checkpoint term; ``mislabel-detect`` refuses ``renormalize`` before its forward passes."""
    run = tiny_recipe("mlp", n_train=8, n_test=2, learning_rates=(0.4, 0.1), curvature={"checkpoints": "all"})
    seen: list[str] = []
    score(load_recipe(run.recipe_path), method="ekfac", k=2, progress=lambda task, done, total: seen.append(task))
    assert seen[0] == "curvature fit (ekfac)" and seen.count("curvature fit (ekfac)") == 3  # start + 2 checkpoints
    renormalised = tiny_recipe("mlp", n_train=8, n_test=2, curvature={"renormalize": True})
    seen.clear()
    with pytest.raises(ParameterError, match="renormalize"):
        mislabel_detect(load_recipe(renormalised.recipe_path), method="arnoldi",
                        progress=lambda task, done, total: seen.append(task))
    assert seen == []
