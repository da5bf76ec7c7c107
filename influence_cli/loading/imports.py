"""Resolve ``"pkg.module:callable"`` and ``"file.py:callable"`` references from a recipe."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable

from influence_cli.errors import RecipeError


def import_callable(ref: str, *, base_dir: Path, key: str) -> Callable[..., Any]:
    """The callable named by ``ref``; ``key`` is the recipe key used in error messages.

    A ``file.py`` path is resolved against ``base_dir`` (the recipe's folder) and imported under
    a private module name, so two recipes' ``models.py`` never collide in ``sys.modules``.
    """
    module_ref, sep, attr = ref.rpartition(":")
    if not sep or not module_ref or not attr:
        raise RecipeError(f"{key}: expected 'pkg.module:callable' or 'file.py:callable', got {ref!r}")
    if module_ref.endswith(".py"):
        path = Path(module_ref).expanduser()
        path = path if path.is_absolute() else base_dir / path
        if not path.is_file():
            raise RecipeError(f"{key}: file not found: {path}")
        name = "_influence_user_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as exc:  # the user's file failed to import: say where
                del sys.modules[name]
                raise RecipeError(f"{key}: importing {path} failed: {type(exc).__name__}: {exc}") from None
    else:
        try:
            module = importlib.import_module(module_ref)
        except ImportError as exc:
            raise RecipeError(f"{key}: cannot import module {module_ref!r}: {exc}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise RecipeError(f"{key}: {module_ref!r} has no callable named {attr!r}")
    return fn
