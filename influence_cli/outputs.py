"""Output targets, checked before any computation, so that nothing the user gave is overwritten.

Every command names what it will write (the report folder, ``--junit FILE``, the baseline of
``--update-baseline``) as :class:`Target` s and calls :func:`guard_outputs` right after reading the
recipe. It refuses, with one line (exit 2):

- an output that is one of the recipe's inputs (the recipe file, a data file, a checkpoint, the
  ``file.py`` of a model, data or loss callable, the accepted baseline), or a report file of an
  output folder that is one of them;
- an output inside the gradient store (``cache_dir``) or an image-folder dataset;
- an existing file that is not the artefact being written (a baseline must load as a baseline, a
  JUnit file must be JUnit XML written by ``check``), a file where a folder goes and vice versa;
- two outputs that are the same file;
- a folder it cannot write in: a temporary file is written and removed in it or, while it does
  not exist, in the nearest existing folder above it (so a refused or failing run creates nothing).

Paths are compared after following symlinks, and by device and inode where the file exists (so
hard links and case-insensitive file systems count too).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

from influence_cli.errors import DataError, InfluenceError
from influence_cli.loading.inputs import recipe_inputs
from influence_cli.recipe import Recipe
from influence_cli.reports.run_info import REPORT_FILES

Kind = Literal["folder", "baseline", "junit"]



@dataclass(frozen=True)
class Target:
    """One output: the ``option`` that named it (for messages), its ``path`` and what it will hold."""

    option: str
    path: Path
    kind: Kind = "folder"

    def __str__(self) -> str:
        return f"{self.option} {self.path}"


@dataclass(frozen=True)
class RunInputs:
    """What a run reads: files (identity → what it is) and folders nothing may be written into."""

    files: dict[tuple[Any, ...], str]
    trees: list[tuple[Path, str]]


def guard_outputs(recipe: Recipe, targets: Sequence[Target], also_reads: Sequence[tuple[Path, str]] = ()) -> None:
    """Refuse, before anything is computed, outputs that would overwrite an input or something that is not
    ours, and outputs that cannot be written (see the module docstring). ``also_reads`` are input files the
    recipe does not name (``check --baseline FILE``), with what they are."""
    inputs = run_inputs(recipe, also_reads)
    written: dict[tuple[Any, ...], Target] = {}
    for target in targets:
        _refuse_inputs(target, inputs)
        for path in _files_of(target):
            other = written.setdefault(_identity(path), target)
            if other is not target:
                raise InfluenceError(f"{target}: {other.option} writes {path} too; give another path")
        _check_existing(target)
    for target in targets:  # only now probe-write: a refused run leaves nothing behind
        _probe(target, _folder_of(target))


def run_inputs(recipe: Recipe, also_reads: Sequence[tuple[Path, str]] = ()) -> RunInputs:
    """The files the recipe names (:func:`~influence_cli.loading.inputs.recipe_inputs`) and the folders
    outputs must stay out of (image folders, the gradient store)."""
    inputs = recipe_inputs(recipe)
    files: dict[tuple[Any, ...], str] = {}
    for path, what in [*also_reads, *((i.path, i.what) for i in inputs if not i.folder)]:
        files.setdefault(_identity(path), what)
    trees = [(i.path, i.what) for i in inputs if i.folder]
    if recipe.cache_dir:
        trees.append((recipe.resolve(recipe.cache_dir), "the gradient store (cache_dir)"))
    return RunInputs(files, [(tree.resolve(), what) for tree, what in trees])


def _identity(path: Path) -> tuple[Any, ...]:
    """The file at ``path`` (symlinks followed): device and inode when it exists, else its resolved path."""
    try:
        st = path.stat()
    except OSError:
        return ("path", str(path.resolve()))
    return ("inode", st.st_dev, st.st_ino)


def _files_of(target: Target) -> Iterator[Path]:
    """The files ``target`` may write: the file itself, or every report file of a folder."""
    if target.kind == "folder":
        yield from (target.path / name for name in REPORT_FILES)
    else:
        yield target.path


def _refuse_inputs(target: Target, inputs: RunInputs) -> None:
    """Refuse a target that is, or (for a folder) holds as a report file, an input, or lies inside an input tree."""
    for path in dict.fromkeys([target.path, *_files_of(target)]):
        what = inputs.files.get(_identity(path))
        if what is not None and not (target.kind == "baseline" and what == "the baseline"):
            shown = "" if path == target.path else f" ({path})"
            raise InfluenceError(f"{target}: refusing to overwrite {what}{shown}")
    resolved = target.path.resolve()
    for tree, what in inputs.trees:
        if resolved.is_relative_to(tree):
            raise InfluenceError(f"{target}: refusing to write inside {what} ({tree})")


def _is_baseline(path: Path) -> bool:
    from influence_cli.audits.baseline import Baseline

    try:
        Baseline.load(path)
    except DataError:
        return False
    return True


def _is_our_junit(path: Path) -> bool:
    import xml.etree.ElementTree as ET

    from influence_cli.reports.check import SUITE

    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError, UnicodeDecodeError):
        return False
    return root.tag == "testsuites" and root.get("name") == SUITE


_ARTEFACTS: dict[str, tuple[str, Callable[[Path], bool]]] = {
    "baseline": ("an influence-cli baseline", _is_baseline),
    "junit": ("JUnit XML written by influence-cli check", _is_our_junit),
}


def _folder_of(target: Target) -> Path:
    return target.path if target.kind == "folder" else target.path.parent


def _check_existing(target: Target) -> None:
    """What exists at ``target`` must be what it will hold: a folder, or the very artefact it is about to
    rewrite; and no file may stand where its folder (or one above) has to be."""
    if target.kind == "folder":
        if target.path.exists() and not target.path.is_dir():
            raise InfluenceError(f"{target}: is a file, not a folder")
    elif target.path.is_dir():
        raise InfluenceError(f"{target}: is a folder; give a file path")
    elif target.path.exists() and not _ARTEFACTS[target.kind][1](target.path):
        raise InfluenceError(f"{target}: refusing to overwrite a file that is not {_ARTEFACTS[target.kind][0]}")
    folder = _folder_of(target)
    blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise InfluenceError(f"{target}: cannot write there: {blocker} is a file, not a folder")


def writable_folder(target: Target) -> None:
    """Check the output folder ``target.path`` (see :func:`guard_outputs`) and that files can be written in it."""
    _check_existing(target)
    _probe(target, target.path)


def _probe(target: Target, folder: Path) -> None:
    """Write and remove a temporary file in ``folder`` or, while it does not exist, in the nearest existing
    folder above it (where it will be created): nothing is created, so a run that fails later leaves no trace."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".influence-cli-probe-", suffix=".part")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InfluenceError(f"{target}: cannot write there: {exc.strerror or exc}") from None
