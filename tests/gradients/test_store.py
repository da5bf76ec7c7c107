"""The gradient store: exact round trips, reuse across runs, resume after a kill, invalidation, and
self-verification (a damaged, edited or swapped shard or manifest is recomputed or rewritten with a warning)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import random_state, save_checkpoint
from safetensors import safe_open
from safetensors.torch import save_file

from influence_cli import load_recipe, score
from influence_cli.gradients.factors import Factors, LayerGrads
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


def _stored(run) -> list:
    return sorted((run.dir / "cache").rglob("*.safetensors"))


def _overwrite_middle(shard, run) -> None:
    data = shard.read_bytes()
    start = max(0, len(data) // 2 - 2048)
    end = min(len(data), start + 4096)
    shard.write_bytes(data[:start] + (bytes(range(256)) * 16)[:end - start] + data[end:])


def _flip_last_bytes(shard, run) -> None:  # tensor bytes only: the header still parses
    data = shard.read_bytes()
    shard.write_bytes(data[:-8] + bytes(b ^ 0xFF for b in data[-8:]))


def _copy_other_checkpoints_shard(shard, run) -> None:  # same batch key and size, other checkpoint
    other = next(s for s in _stored(run) if s.name == shard.name and s != shard)
    shard.write_bytes(other.read_bytes())


def _edit_layout_metadata(shard, run) -> None:  # a readable shard whose metadata was edited
    with safe_open(str(shard), framework="pt") as fh:
        metadata, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    save_file(tensors, str(shard), metadata={**metadata, "meta": metadata["meta"].replace('"flat"', '"layers"')})


def _drop_metadata_keys(shard, run) -> None:
    with safe_open(str(shard), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    save_file(tensors, str(shard), metadata={"note": "edited"})


def _not_safetensors(shard, run) -> None:
    shard.write_bytes(b"not a safetensors file")


@pytest.mark.parametrize("damage", [_overwrite_middle, _flip_last_bytes, _copy_other_checkpoints_shard,
                                    _edit_layout_metadata, _drop_metadata_keys, _not_safetensors])
def test_a_damaged_shard_is_recomputed_with_one_warning_naming_it(tiny_recipe, damage) -> None:
    run = tiny_recipe("mlp", n_train=N_TRAIN, n_test=2, batch_size=BATCH, projection={"dim": 8, "seed": 1})
    clean = _scores(_session(run, cache_dir="cache"), [0, 1])
    shard = _stored(run)[1]
    damage(shard, run)
    session = _session(run, cache_dir="cache")
    with pytest.warns(UserWarning) as caught:
        got = _scores(session, [0, 1])
    (message,) = [str(w.message) for w in caught if "gradient shard" in str(w.message)]
    assert message.startswith(f"{shard}: damaged gradient shard (")
    assert (session.store.hits, session.store.misses) == (5, 1)
    assert torch.equal(got[0], clean[0]) and torch.equal(got[1], clean[1])
    again = _session(run, cache_dir="cache")  # the shard was replaced by a good one
    assert torch.equal(_scores(again, [0, 1])[0], clean[0]) and again.store.hits == 6


def test_swapped_shards_are_both_recomputed(tiny_recipe, recwarn) -> None:
    run = tiny_recipe("mlp", n_train=N_TRAIN, n_test=2, batch_size=BATCH)
    clean = _scores(_session(run, cache_dir="cache"), [0, 1])
    first, second = (s for s in _stored(run) if s.name == _stored(run)[0].name)
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b), second.write_bytes(a)
    got = _scores(_session(run, cache_dir="cache"), [0, 1])
    assert torch.equal(got[0], clean[0]) and torch.equal(got[1], clean[1])
    warned = [str(w.message).partition(":")[0] for w in recwarn if "gradient shard" in str(w.message)]
    assert sorted(warned) == sorted([str(first), str(second)])


@pytest.mark.parametrize("text", ["{not json", "{}", '{"format": 2}', "[1, 2]", ""])
def test_an_edited_manifest_is_rewritten_with_a_warning_and_the_shards_stay_usable(tiny_recipe, text) -> None:
    run = tiny_recipe("mlp", n_train=N_TRAIN, n_test=2, batch_size=BATCH)
    first = _session(run, cache_dir="cache")
    clean = _scores(first, [0])
    manifest = first.store.dir / "manifest.json"
    original = manifest.read_text()
    manifest.write_text(text)
    with pytest.warns(UserWarning, match=f"^{manifest}: edited or damaged; rewriting it") as caught:
        session = _session(run, cache_dir="cache")
    assert len(caught) == 1
    assert torch.equal(_scores(session, [0])[0], clean[0]) and session.store.hits == 6
    assert manifest.read_text() == original


def test_a_damaged_shard_warns_in_one_line_on_the_cli(tiny_recipe) -> None:
    from typer.testing import CliRunner

    from influence_cli.cli import app

    run = tiny_recipe("mlp", n_train=N_TRAIN, n_test=2, batch_size=BATCH, cache_dir="cache")
    args = ["score", str(run.recipe_path), "--quiet", "--out", str(run.dir / "report")]
    assert CliRunner().invoke(app, args).exit_code == 0
    clean = json.loads((run.dir / "report" / "influence.json").read_text())["test"]
    shard = _stored(run)[2]
    _overwrite_middle(shard, run)
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert res.stderr.startswith(f"warning: {shard}: damaged gradient shard (") and res.stderr.count("\n") == 1
    assert json.loads((run.dir / "report" / "influence.json").read_text())["test"] == clean


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
