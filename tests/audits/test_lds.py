"""The linear datamodeling score (``evaluate``): the Spearman helper against scipy, an exactly linear
setting where TracIn's LDS is 1, the baselines' values computed by hand, and resuming from stored subsets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from scipy.stats import spearmanr

from conftest import TinyRun, write_tiny_recipe
from influence_cli import InfluenceError, Session, load_recipe
from influence_cli.audits.lds import LDS_METHODS, evaluate, lds, spearman_rows, subset_draws
from influence_cli.errors import ParameterError

LOSS_FILE = "def linear_loss(outputs, targets):\n    return -(outputs * targets).sum(1)\n"
ETA = 0.1  # the step train() takes


def test_spearman_rows_matches_scipy_with_ties():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(6, 25, generator=gen, dtype=torch.float64)
    b = torch.randn(6, 25, generator=gen, dtype=torch.float64)
    b[0] = 2.0 * a[0] + 1.0                                # perfectly monotone: 1
    b[1] = -a[1] ** 3                                      # perfectly anti-monotone: -1
    a[2] = a[2].round()                                    # many ties: scipy's average ranks
    b[3, :10] = b[3, 0]
    got = spearman_rows(a, b)
    want = torch.tensor([spearmanr(a[i].numpy(), b[i].numpy()).statistic for i in range(6)], dtype=torch.float64)
    assert got[0] == pytest.approx(1.0, abs=1e-12) and got[1] == pytest.approx(-1.0, abs=1e-12)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert spearman_rows(torch.ones(1, 5), torch.randn(1, 5)).tolist() == [0.0]  # constant: no ranking


def test_lds_is_spearman_of_subset_sums_against_negative_loss():
    gen = torch.Generator().manual_seed(1)
    tau, masks = torch.randn(3, 12, generator=gen), torch.rand(8, 12, generator=gen) < 0.5
    losses = torch.randn(8, 3, generator=gen)
    got = lds(tau, masks, losses)
    for i in range(3):
        predicted = [float(tau[i][masks[s]].sum()) for s in range(8)]
        assert float(got[i]) == pytest.approx(spearmanr(predicted, (-losses[:, i]).tolist()).statistic, abs=1e-12)


def test_subset_draws_are_seeded_and_extend():
    a, b = subset_draws(40, 5, 0.25, seed=3), subset_draws(40, 8, 0.25, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b[:5]))
    assert all(len(x) == 10 and torch.equal(x, x.sort().values) and len(x.unique()) == 10 for x in a)
    assert not torch.equal(a[0], subset_draws(40, 1, 0.25, seed=4)[0])


def _linear_run(folder: Path, n_train: int = 24, n_test: int = 8) -> TinyRun:
    """A linear model (out = Wx + b) under the loss ℓ = −⟨out, y⟩, linear in θ: every gradient
    g(z) = −y ⊗ [x, 1] is the same at every θ, so a gradient step on S changes each test loss by
    exactly −η Σ_{j∈S} ⟨g(z_j), g(z′_i)⟩ = −(η / Σ_c η_c) Σ_{j∈S} τ^TracIn_ij."""
    folder.mkdir(parents=True)
    (folder / "lossfile.py").write_text(LOSS_FILE)
    gen = torch.Generator().manual_seed(5)
    train = (torch.randn(n_train, 6, generator=gen), torch.randn(n_train, 3, generator=gen))
    test = (torch.randn(n_test, 6, generator=gen), torch.randn(n_test, 3, generator=gen))
    return write_tiny_recipe(folder, "linear", train=train, test=test, loss="lossfile.py:linear_loss")


def _gradient_step(run: TinyRun, calls: list[torch.Tensor] | None = None):
    """train(indices, seed): one step of size η from the last checkpoint on the subset's summed loss."""
    x, y = (t.double() for t in run.train)
    start = {k: v.double() for k, v in run.states[-1].items()}

    def train(indices: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
        assert indices.dtype == torch.int64 and torch.equal(indices, indices.sort().values) and seed == 7
        if calls is not None:
            calls.append(indices)
        return {"weight": start["weight"] + ETA * y[indices].T @ x[indices],   # −η Σ ∂ℓ/∂W
                "bias": start["bias"] + ETA * y[indices].sum(0)}

    return train


@pytest.fixture
def linear_run(tmp_path) -> TinyRun:
    return _linear_run(tmp_path / "linear")


def test_tracin_is_exact_where_the_effect_is_linear(linear_run):
    session = Session.from_recipe(load_recipe(linear_run.recipe_path), need_test=True)
    result = evaluate(session, _gradient_step(linear_run), methods=["tracin", "ekfac", "loss", "random"], subsets=30,
                      fraction=0.5, seed=7, keep_scores=True)
    m = result.methods
    assert list(m) == ["tracin", "ekfac", "loss", "random"]
    # The retrained losses are the hand-computed linear function of the subset.
    x, y = (t.double() for t in linear_run.train)
    tx, ty = (t.double() for t in linear_run.test)
    start = {k: v.double() for k, v in linear_run.states[-1].items()}
    base = -((tx @ start["weight"].T + start["bias"]) * ty).sum(1)                 # L_i(θ0) [M]
    effect = (ty @ y.T) * (tx @ x.T + 1)                                           # ⟨g_i, g_j⟩ [M, N]
    want = base[None, :] - ETA * result.masks.double() @ effect.T                  # [S, M]
    torch.testing.assert_close(result.losses, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(result.scores["tracin"], sum(linear_run.learning_rates) * effect, rtol=1e-9, atol=1e-9)
    # TracIn's predicted effect is an exact affine function of −L: LDS 1 for every test example.
    torch.testing.assert_close(m["tracin"].per_test, torch.ones(8, dtype=torch.float64), rtol=0, atol=1e-12)
    assert m["tracin"].mean == pytest.approx(1.0, abs=1e-12) and m["tracin"].std == pytest.approx(0.0, abs=1e-12)
    # ekfac needs a classification loss: skipped with the reason, not a crash.
    assert m["ekfac"].per_test is None and "classification loss" in m["ekfac"].skipped
    # loss baseline: τ_ij = −ℓ(z_j) at the final checkpoint, by hand with scipy.
    train_loss = -((x @ start["weight"].T + start["bias"]) * y).sum(1)
    for i in range(8):
        predicted = (-train_loss[None, :] * result.masks.double()).sum(1)
        assert float(m["loss"].per_test[i]) == pytest.approx(
            spearmanr(predicted.numpy(), (-result.losses[:, i]).numpy()).statistic, abs=1e-12)
    # random: near 0 (each LDS_i has std ≈ 1/√S ≈ 0.19; the mean of 8, ≈ 0.07).
    assert abs(m["random"].mean) < 0.25 and m["random"].skipped is None
    d = result.to_dict()
    assert d["methods"][1] == {"method": "ekfac", "mean_lds": None, "std_lds": None, "seconds": d["methods"][1]["seconds"],
                               "skipped": m["ekfac"].skipped, "lds": None}
    assert (d["subsets"], d["subset_size"], d["n_train"], d["retrain"]["trained"]) == (30, 12, 24, 30)


def test_resume_retrains_nothing_and_refuses_other_settings(linear_run, tmp_path):
    out, calls = tmp_path / "out", []
    train = _gradient_step(linear_run, calls)
    recipe = load_recipe(linear_run.recipe_path)
    first = evaluate(recipe, train, methods="tracin", subsets=6, seed=7, out=out)
    assert len(calls) == 6 and first.trained == 6 and len(list((out / "lds-subsets").glob("subset-*.json"))) == 6
    calls.clear()
    again = evaluate(recipe, train, methods="tracin", subsets=6, seed=7, out=out)
    assert calls == [] and again.trained == 0
    torch.testing.assert_close(again.losses, first.losses, rtol=0, atol=0)
    assert again.methods["tracin"].mean == first.methods["tracin"].mean == pytest.approx(1.0)
    # an interrupted run: one subset lost; only it is retrained, with the same draw
    (out / "lds-subsets" / "subset-00003.json").unlink()
    evaluate(recipe, train, methods="tracin", subsets=6, seed=7, out=out)
    assert len(calls) == 1 and torch.equal(calls[0], subset_draws(24, 4, 0.5, 7)[3])
    calls.clear()
    # more subsets extend the same draws
    more = evaluate(recipe, train, methods="tracin", subsets=8, seed=7, out=out)
    assert len(calls) == 2 and more.trained == 2 and torch.equal(more.losses[:6], first.losses)
    calls.clear()
    with pytest.raises(InfluenceError, match=r"other settings \(different: fraction\).*--overwrite"):
        evaluate(recipe, train, methods="tracin", subsets=6, fraction=0.25, seed=7, out=out)
    with pytest.raises(InfluenceError, match=r"different: test_indices"):
        evaluate(recipe, train, methods="tracin", subsets=6, seed=7, test_indices=[0, 1], out=out)
    assert calls == []
    evaluate(recipe, train, methods="tracin", subsets=6, fraction=0.25, seed=7, out=out, overwrite=True)
    assert len(calls) == 6 and len(list((out / "lds-subsets").glob("subset-*.json"))) == 6


def test_errors_name_the_function_and_subset(linear_run):
    recipe = load_recipe(linear_run.recipe_path)

    def broken(indices: torch.Tensor, seed: int) -> None:
        if len(broken.seen) == 2:
            raise RuntimeError("out of data\nsecond line")
        broken.seen.append(indices)
        return {"weight": torch.zeros(3, 6), "bias": torch.zeros(3)}

    broken.seen = []
    with pytest.raises(InfluenceError) as err:
        evaluate(recipe, broken, methods="tracin", subsets=4)
    assert err.value.message == ("train function 'test_lds.py:test_errors_name_the_function_and_subset.<locals>.broken', subset 2: "
                                 "RuntimeError: out of data")
    with pytest.raises(InfluenceError, match=r"subset 0: does not fit the model: missing 1 key\(s\)"):
        evaluate(recipe, lambda i, s: {"weight": torch.zeros(3, 6)}, methods="tracin", subsets=3)
    with pytest.raises(InfluenceError, match="subset 0: returned a int; return the trained nn.Module"):
        evaluate(recipe, lambda i, s: 3, methods="tracin", subsets=3)
    for kw, parameter in (({"subsets": 2}, "subsets"), ({"fraction": 1.0}, "fraction"), ({"fraction": 0.0}, "fraction"),
                          ({"methods": ["tracin", "nope"]}, "methods"), ({"test_indices": [99]}, "test_indices")):
        with pytest.raises(ParameterError) as err:
            evaluate(recipe, broken, **kw)
        assert err.value.parameter == parameter


def test_the_cli_spells_every_method():
    from influence_cli.cli.evaluate import _METHODS

    assert _METHODS.split(", ") == list(LDS_METHODS)


def test_evaluate_refuses_torchrun(monkeypatch):
    """Under torchrun every rank would retrain every subset: one clear error instead."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(InfluenceError, match="runs in one process; start it without torchrun"):
        evaluate(Path("unused.yaml"), lambda indices, seed: None)  # type: ignore[arg-type]
