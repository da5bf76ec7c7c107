"""What a recipe reads, before anything loads: its files and folders, each with what it is.

One list for everything that needs it: the output guard (nothing an output may overwrite,
:mod:`influence_cli.outputs`), the gradient store's key and a run folder's fingerprint
(:func:`content_digest`). Paths are resolved against the recipe's folder; nothing is imported.
"""

from __future__ import annotations

import functools
import glob as globlib
import hashlib
from dataclasses import dataclass
from pathlib import Path

from influence_cli.recipe import (
    CheckpointGlob,
    DataSplit,
    FactoryData,
    HFTrainerCheckpoints,
    ImageFolderData,
    Recipe,
    TensorsData,
    TextData,
)


@dataclass(frozen=True)
class Input:
    """One input: its ``path``, what it is (``the training data``), and whether it is a ``folder`` of files."""

    path: Path
    what: str
    folder: bool = False


def _code(recipe: Recipe, ref: str | None, what: str) -> list[Input]:
    """The ``file.py`` of a ``file.py:callable`` reference (a ``pkg.module:callable`` is installed code)."""
    file = (ref or "").rpartition(":")[0]
    return [Input(recipe.resolve(file), what)] if file.endswith(".py") else []


def data_inputs(recipe: Recipe, spec: DataSplit | None, split: str) -> list[Input]:
    """The files (or image folder) one data split reads."""
    if isinstance(spec, (TensorsData, TextData)):
        return [Input(recipe.resolve(spec.path), f"the {split} data")]
    if isinstance(spec, FactoryData):
        return _code(recipe, spec.factory, f"the {split} data code")
    if isinstance(spec, ImageFolderData):
        return [Input(recipe.resolve(spec.root), f"the {split} images", folder=True)]
    return []


def code_inputs(recipe: Recipe) -> list[Input]:
    """The model's and the loss's ``file.py``."""
    return _code(recipe, recipe.model.factory, "the model code") + _code(recipe, recipe.loss, "the loss code")


def checkpoint_files(recipe: Recipe) -> list[Path]:
    """Every checkpoint file (a glob expanded; every file of a Trainer run's checkpoint folders)."""
    spec = recipe.checkpoints
    if isinstance(spec, HFTrainerCheckpoints):
        pattern = str(recipe.resolve(spec.hf_trainer_dir) / "checkpoint-*" / "*")
    elif isinstance(spec, CheckpointGlob):
        pattern = str(recipe.resolve(spec.glob))
    else:
        return [recipe.resolve(c.path) for c in spec]
    return [Path(p) for p in globlib.glob(pattern)]


def recipe_inputs(recipe: Recipe) -> list[Input]:
    """Everything the recipe reads: the recipe file, checkpoints, data, code, the accepted baseline."""
    inputs = [Input(Path(recipe.source), "the recipe")] if recipe.source != "<recipe>" else []
    inputs += [Input(p, "a checkpoint") for p in checkpoint_files(recipe)]
    inputs += data_inputs(recipe, recipe.data.train, "training") + data_inputs(recipe, recipe.data.test, "test")
    inputs += code_inputs(recipe)
    if recipe.checks is not None and recipe.checks.baseline:
        inputs.append(Input(recipe.resolve(recipe.checks.baseline), "the baseline"))
    return inputs


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes. Read once per process while the file is unchanged (same device,
    inode, size, modification and change times; the change time moves on every write and cannot be set
    back, so a rewrite is never missed): one run asks for its data files' hashes several times (the
    output folder's check before computing, the store key, run.json)."""
    st = Path(path).stat()
    return _sha256_of(str(Path(path).resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@functools.lru_cache(maxsize=1024)
def _sha256_of(path: str, dev: int, inode: int, size: int, mtime_ns: int, ctime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_digest(item: Input) -> str | None:
    """sha256 of an input's content: a file's bytes; a folder's listing (relative path and size of
    every file: cheap, and it changes when images are added, removed, moved or rewritten to another
    size); ``None`` when it does not exist."""
    if item.folder:
        if not item.path.is_dir():
            return None
        listing = sorted(f"{p.relative_to(item.path)}\t{p.stat().st_size}" for p in item.path.rglob("*") if p.is_file())
        return hashlib.sha256("\n".join(listing).encode()).hexdigest()
    return file_sha256(item.path) if item.path.is_file() else None
