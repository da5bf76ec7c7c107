"""The gradient store: exact round trips, reuse across runs, resume after a kill, invalidation."""

from __future__ import annotations

import os

import pytest
import torch

from conftest import random_state, save_checkpoint
from influence_cli import load_recipe, score
from influence_cli.errors import GradientError
from influence_cli.gradients.factorized import Factors, LayerGrads
from influence_cli.gradients.layers import ParamLayout
from influence_cli.gradients.per_example import FlatGrads
from influence_cli.gradients.store import GradientStore, decode, encode
from influence_cli.session import Session

LAYOUT = ParamLayout(("a.weight", "b.weight"), (6, 4), ("a", "b"), ((0, 6), (6, 10)))
N_TRAIN, BATCH = 10, 4  # 3 batches per checkpoint, 2 checkpoints


def _session(run, **changes) -> Session:
    return Session.from_recipe(load_recipe(run.rewrite(**changes)), need_test=True)


def _scores(session: Session, test: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    result = score(session, method="gas-l", test_indices=test, k=3, keep_matrix=True)
    return result.passes.matrix, result.passes.self_influence


def test_encode_decode_round_trip() -> None:
    torch.manual_seed(0)
    flat = FlatGrads(torch.randn(3, 10), LAYOUT)
    layers = LayerGrads([Factors(torch.randn(3, 2, 2), torch.randn(3, 2, 3), True), torch.randn(3, 4)], LAYOUT)
    for grads in (flat, layers):
        back = decode(*encode(grads), torch.device("cpu"))
        assert type(back) is type(grads) and back.layout == grads.layout
        assert torch.equal(back.dot(grads), grads.dot(grads))
        assert torch.equal(back.layer_sq_norms(), grads.layer_sq_norms())


@pytest.mark.parametrize("projection", [None, {"dim": 8, "seed": 2}])
def test_second_run_reuses_every_shard(tiny_recipe, projection) -> None:
    run = tiny_recipe("cnn", n_train=N_TRAIN, n_test=4, batch_size=BATCH, projection=projection)
    plain = _scores(_session(run), [0, 1])
    first = _session(run, cache_dir="cache")
    assert torch.equal(_scores(first, [0, 1])[0], plain[0])
    assert (first.store.hits, first.store.misses) == (0, 6)
    second = _session(run, cache_dir="cache")
    other = _scores(second, [2, 3])  # other test examples: training side comes from the store
    assert (second.store.hits, second.store.misses) == (6, 0)
    assert torch.equal(other[1], plain[1])
    assert torch.equal(other[0], _scores(_session(run, cache_dir=None), [2, 3])[0])


def test_resume_after_kill_gives_identical_results(tiny_recipe, monkeypatch) -> None:
    run = tiny_recipe("mlp", n_train=N_TRAIN, n_test=3, batch_size=BATCH)
    expected = _scores(_session(run), [0, 1, 2])
    saved = []
    real_save = GradientStore.save

    def dying_save(self, *args):
        if len(saved) == 3:
            raise KeyboardInterrupt
        saved.append(real_save(self, *args))
        return saved[-1]

    monkeypatch.setattr(GradientStore, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        _scores(_session(run, cache_dir="cache"), [0, 1, 2])
    monkeypatch.setattr(GradientStore, "save", real_save)
    assert not list((run.dir / "cache").rglob("*.part"))
    resumed = _session(run, cache_dir="cache")
    got = _scores(resumed, [0, 1, 2])
    assert (resumed.store.hits, resumed.store.misses) == (3, 3)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_changed_checkpoint_or_recipe_invalidates_only_what_it_must(tiny_recipe) -> None:
    run = tiny_recipe("mlp", n_train=N_TRAIN, n_test=2, batch_size=BATCH)
    _scores(_session(run, cache_dir="cache"), [0])
    save_checkpoint(run.ckpt_paths[1], random_state("mlp", torch.Generator().manual_seed(99)), "plain", 0.125)
    changed = _session(run, cache_dir="cache")
    got = _scores(changed, [0])
    assert (changed.store.hits, changed.store.misses) == (3, 3)  # checkpoint 1 reused, 2 recomputed
    assert torch.equal(got[0], _scores(_session(run, cache_dir=None), [0])[0])
    other_layers = _session(run, cache_dir="cache", layers=["0"])
    _scores(other_layers, [0])
    assert other_layers.store.hits == 0 and other_layers.store.dir != changed.store.dir


def test_unreadable_shard_is_an_error_naming_it(tiny_recipe) -> None:
    run = tiny_recipe("mlp", n_train=N_TRAIN, n_test=2, batch_size=BATCH)
    session = _session(run, cache_dir="cache")
    _scores(session, [0])
    shard = next((run.dir / "cache").rglob("*.safetensors"))
    shard.write_bytes(b"not a safetensors file")
    with pytest.raises(GradientError, match=shard.name):
        _scores(_session(run, cache_dir="cache"), [0])


def test_score_no_cache_flag(tiny_recipe) -> None:
    from typer.testing import CliRunner

    from influence_cli.cli import app

    run = tiny_recipe("mlp", n_train=N_TRAIN, n_test=2, batch_size=BATCH, cache_dir="cache")
    no_cache = CliRunner().invoke(app, ["score", str(run.recipe_path), "--no-cache", "--quiet"])
    assert no_cache.exit_code == 0, no_cache.output
    assert not (run.dir / "cache").exists()
    cached = CliRunner().invoke(app, ["score", str(run.recipe_path), "--quiet"])
    assert cached.exit_code == 0, cached.output
    assert len(list((run.dir / "cache").rglob("*.safetensors"))) == 6


def test_editing_the_model_code_or_rewriting_data_invalidates_the_store(tiny_recipe) -> None:
    from influence_cli import load_recipe
    from influence_cli.gradients.store import store_key

    run = tiny_recipe("mlp", n_train=6, n_test=2)
    code = run.dir / "models.py"
    code.write_text("from torch import nn\ndef build():\n    return nn.Sequential(nn.Linear(6, 3))\n")
    recipe_path = run.rewrite(model={"factory": "models.py:build"}, cache_dir="cache")
    first = store_key(load_recipe(recipe_path))
    stat = (run.dir / "train.pt").stat()
    code.write_text(code.read_text().replace("nn.Linear(6, 3)", "nn.Linear(6, 3, bias=True)"))
    assert store_key(load_recipe(recipe_path)) != first
    second = store_key(load_recipe(recipe_path))
    data = torch.load(run.dir / "train.pt")
    data["labels"] = (data["labels"] + 1) % 3  # same size; the mtime is put back below
    torch.save(data, run.dir / "train.pt")
    os.utime(run.dir / "train.pt", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert store_key(load_recipe(recipe_path)) != second


def test_a_cache_dir_that_is_a_file_is_a_recipe_error(tiny_recipe) -> None:
    from influence_cli import load_recipe, score
    from influence_cli.errors import RecipeError

    run = tiny_recipe("mlp", n_train=6, n_test=2)
    with pytest.raises(RecipeError, match=r"^cache_dir: cannot create the gradient store in .*train.pt: "):
        score(load_recipe(run.rewrite(cache_dir="train.pt")), k=2)
