"""``import_callable``: ``file.py:callable`` (relative to the recipe, one private module per file) and
``pkg.module:callable`` references, and one-line errors that start with the recipe key."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from influence_cli.errors import RecipeError, first_line
from influence_cli.loading.imports import import_callable


def _write(folder: Path, name: str, code: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(code)
    return path


def _error(ref: str, base_dir: Path, key: str = "model.factory") -> str:
    with pytest.raises(RecipeError) as info:
        import_callable(ref, base_dir=base_dir, key=key)
    return info.value.message


def test_a_file_is_resolved_against_the_recipes_folder(tmp_path):
    path = _write(tmp_path / "recipes", "models.py", "def build(n=2):\n    return n * 21\n")
    fn = import_callable("models.py:build", base_dir=tmp_path / "recipes", key="model.factory")
    assert fn() == 42 and fn(n=1) == 21
    assert import_callable(f"{path}:build", base_dir=tmp_path / "elsewhere", key="k") is fn  # absolute: imported once
    assert fn.__module__.startswith("_influence_user_") and sys.modules[fn.__module__].__file__ == str(path)


def test_two_files_with_the_same_name_do_not_collide(tmp_path):
    for value in (1, 2):
        _write(tmp_path / f"r{value}", "models.py", f"def build():\n    return {value}\n")
    got = [import_callable("models.py:build", base_dir=tmp_path / f"r{v}", key="k")() for v in (1, 2)]
    assert got == [1, 2]
    modules = {import_callable("models.py:build", base_dir=tmp_path / f"r{v}", key="k").__module__ for v in (1, 2)}
    assert len(modules) == 2 and "models" not in modules


def test_a_module_reference_imports_installed_code(tmp_path):
    assert import_callable("torch.nn:Linear", base_dir=tmp_path, key="k") is torch.nn.Linear
    assert import_callable("influence_cli.errors:first_line", base_dir=tmp_path, key="k") is first_line
    assert import_callable("fixtures.tiny_models:build_mlp", base_dir=tmp_path, key="k")().__class__ is \
        torch.nn.Sequential


@pytest.mark.parametrize("ref", ["build", ":build", "models.py:", "models.py"])
def test_a_malformed_reference(tmp_path, ref):
    assert _error(ref, tmp_path, key="loss") == (
        f"loss: expected 'pkg.module:callable' or 'file.py:callable', got {ref!r}")


def test_a_missing_file(tmp_path):
    assert _error("sub/nope.py:build", tmp_path) == f"model.factory: file not found: {tmp_path / 'sub' / 'nope.py'}"


@pytest.mark.parametrize("code", ["x = 1\n", "build = 3\n"], ids=["absent", "not-callable"])
def test_a_missing_or_non_callable_name(tmp_path, code):
    _write(tmp_path, "m.py", code)
    assert _error("m.py:build", tmp_path, key="data.train.factory") == (
        "data.train.factory: 'm.py' has no callable named 'build'")
    assert _error("torch.nn:no_such_layer", tmp_path) == (
        "model.factory: 'torch.nn' has no callable named 'no_such_layer'")


def test_a_module_that_cannot_be_imported(tmp_path):
    assert _error("no_such_package_0f9c.sub:f", tmp_path).startswith(
        "model.factory: cannot import module 'no_such_package_0f9c.sub': ")


def test_a_file_that_fails_to_import_says_where_and_can_be_fixed(tmp_path):
    path = _write(tmp_path, "m.py", "raise ValueError('boom')\n")
    assert _error("m.py:build", tmp_path) == f"model.factory: importing {path} failed: ValueError: boom"
    _write(tmp_path, "m.py", "def build():\n    return 'fixed'\n")  # nothing half-imported was kept
    assert import_callable("m.py:build", base_dir=tmp_path, key="k")() == "fixed"
