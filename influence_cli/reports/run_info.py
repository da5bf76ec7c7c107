"""``run.json``: what a command ran on, so that ``report`` can re-read the data later.

Every command that writes into an output folder DIR also records, in ``DIR/run.json``::

    {"version", "git_sha" (of the recipe's folder, when it is in a git work tree),
     "recipe_path" (absolute), "base_dir" (what relative recipe paths resolve against),
     "recipe" (the recipe as data, defaults included), "inputs" (fingerprint: see :func:`fingerprint`),
     "checkpoints": [{"path", "learning_rate", "sha256"}],
     "commands": {"<command>": {"finished" (UTC ISO time), "seconds", "argv",
                                "tasks": [{"task", "total", "seconds"}]}}}

Several commands may share a folder, even at the same time: each one adds or replaces its own entry
under ``commands`` while holding the folder's lock; the top-level keys describe the latest run.

A folder checks itself (:func:`check_same_inputs`): a command refuses to write into a folder whose
run.json records another recipe or other data (``--overwrite`` allows it), and a damaged run.json
is an error for every command (and for ``report``), never silently replaced.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from influence_cli.errors import DataError, InfluenceError
from influence_cli.files import folder_lock, write_json
from influence_cli.loading.inputs import content_digest, recipe_inputs
from influence_cli.progress import TaskTiming
from influence_cli.recipe import Recipe, parse_recipe
from influence_cli.recipe.schema import SKETCH_VERSION
from influence_cli.version import __version__

RUN_FILE = "run.json"


def write_run_info(out: Path, command: str, recipe: Recipe, *, seconds: float,
                   checkpoints: Sequence[Any] = (), tasks: Sequence[TaskTiming] = ()) -> Path:
    """Add ``command``'s entry to ``out/run.json`` (created if absent); returns its path.

    ``checkpoints`` are objects with ``to_dict()`` (:class:`~influence_cli.session.CheckpointInfo`).
    """
    path = out / RUN_FILE
    with folder_lock(out):  # other commands may update the same run.json now
        previous = read_run_info(out) or {}
        commands = dict(previous.get("commands", {}))
        commands[command] = {
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(seconds, 3),
            "argv": sys.argv[1:],
            "tasks": [{"task": t.task, "total": t.total, "seconds": round(t.seconds, 3)} for t in tasks],
        }
        info = {
            "version": __version__,
            "git_sha": git_sha(Path(recipe.base_dir)),
            "inputs": fingerprint(recipe),
            "recipe_path": str(Path(recipe.source).resolve()) if recipe.source != "<recipe>" else None,
            "base_dir": str(Path(recipe.base_dir).resolve()),
            "recipe": recipe.to_dict(),
            "checkpoints": [c.to_dict() for c in checkpoints] or previous.get("checkpoints", []),
            "commands": commands,
        }
        return write_json(path, info)


def read_run_info(out: Path) -> dict[str, Any] | None:
    """``out/run.json`` as data, ``None`` when the folder has none; a damaged file is an error."""
    path = out / RUN_FILE
    return read_json_object(path) if path.is_file() else None


def read_json_object(path: Path) -> dict[str, Any]:
    """A report file holding one JSON object; unreadable or other JSON is a :class:`DataError` naming it."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise DataError(f"{path}: cannot read: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def recipe_of(run: dict[str, Any], fallback: dict[str, Any] | None = None) -> Recipe:
    """The recipe a run used, with relative paths resolving against its recorded ``base_dir``.

    ``fallback`` (the ``recipe`` key of a report JSON) is used when run.json has no recipe.
    """
    data = run.get("recipe") or fallback
    if not data:
        raise InfluenceError(f"{RUN_FILE}: no recipe recorded")
    return parse_recipe(data, base_dir=Path(run.get("base_dir") or "."), source=run.get("recipe_path") or RUN_FILE)


def git_sha(folder: Path) -> str | None:
    """The commit checked out in ``folder``'s git work tree, ``None`` outside one (or without git)."""
    try:
        res = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


#: recipe keys that change results; the others only say how or where to compute (batch_size,
#: device, tf32, factorize (exact either way), memory_gb, cache_dir, output, trust_checkpoints, checks)
RESULT_KEYS = ("model", "checkpoints", "data", "loss", "layers", "projection", "dtype", "curvature")

#: every file a command may write into its output folder
REPORT_FILES = ("influence.json", "influence.csv", "scores.safetensors", "mislabels.json", "mislabels.csv",
                "targets.json", "targets.csv", "suspects.txt", "check.json", "check.md", "summary.md", RUN_FILE,
                "report.html", "ground_truth.json", "lds.json", "lds.md")
#: Folders of our files (``evaluate``'s per-subset losses): removed with the reports, only their ``*.json``.
REPORT_FOLDERS = ("lds-subsets",)


def fingerprint(recipe: Recipe) -> dict[str, Any]:
    """What a folder's results were computed from: sha256 of each result-changing recipe key
    (:data:`RESULT_KEYS`, defaults included) and of every input file the recipe names (data files
    and folders, model/data/loss code). Checkpoint hashes are recorded beside it (``checkpoints``)."""
    data = recipe.to_dict()
    items = [i for i in recipe_inputs(recipe) if i.what not in ("the recipe", "a checkpoint", "the baseline")]
    if data.get("projection") is not None:  # the sketch family too: gradients projected otherwise differ
        data["projection"] = {**data["projection"], "sketch": SKETCH_VERSION}
    return {"recipe": {k: _sha256(json.dumps(data.get(k), sort_keys=True)) for k in RESULT_KEYS},
            "files": {i.what: content_digest(i) for i in items}}


def other_run(out: Path, recipe: Recipe) -> str | None:
    """What differs between ``recipe`` and the run whose results ``out`` holds (``None``: no other run,
    or one that cannot be compared, e.g. an input is missing and loading will say so)."""
    run = read_run_info(out) if out.is_dir() else None
    before = None if run is None else run.get("inputs")
    if not isinstance(before, dict) or not isinstance(before.get("recipe"), dict):
        return None
    now = fingerprint(recipe)
    if None in now["files"].values():
        return None
    keys = [k for k in RESULT_KEYS  # (a key an older version did not record is not a difference)
            if k in before["recipe"] and before["recipe"][k] != now["recipe"][k]]
    files = sorted(k for k in {*before.get("files", {}), *now["files"]} if before.get("files", {}).get(k) != now["files"].get(k))
    if not keys and not files:
        return None
    owner = run.get("recipe_path") if run is not None else None  # type: ignore[union-attr]
    same = owner is not None and Path(owner) == Path(recipe.source).resolve()
    what = ", ".join([*(f"`{k}`" for k in keys), *files])
    return f"{'an earlier version of this recipe' if same else owner or 'another recipe'} (different: {what})"


def check_same_inputs(out: Path, recipe: Recipe, *, overwrite: bool = False, option: str = "--out") -> bool:
    """Whether ``out`` holds another run's results (:func:`other_run`): refused unless ``overwrite``
    (then the caller replaces them: :func:`clear_reports`)."""
    other = other_run(out, recipe)
    if other is not None and not overwrite:
        raise InfluenceError(f"{option} {out}: holds the results of {other}; give another folder, or --overwrite "
                             "to replace them")
    return other is not None


def clear_reports(out: Path) -> None:
    """Remove every report file (:data:`REPORT_FILES`) from ``out``: another run's results, replaced."""
    for name in REPORT_FILES:
        (out / name).unlink(missing_ok=True)
    for name in REPORT_FOLDERS:
        if (out / name).is_dir():
            for f in (out / name).glob("*.json"):
                f.unlink()
            with contextlib.suppress(OSError):  # not empty: something of the user's is kept
                (out / name).rmdir()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
