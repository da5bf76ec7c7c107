"""``run.json``: what a command ran on, so that ``report`` can re-read the data later.

Every command that writes into an output folder DIR also records, in ``DIR/run.json``::

    {"version", "recipe_path" (absolute), "base_dir" (what relative recipe paths resolve against),
     "recipe" (the recipe as data), "checkpoints": [{"path", "learning_rate", "sha256"}],
     "commands": {"<command>": {"finished" (UTC ISO time), "seconds", "argv",
                                "tasks": [{"task", "total", "seconds"}]}}}

Several commands may share a folder, even at the same time: each one adds or replaces its own entry
under ``commands`` while holding the folder's lock; the top-level keys describe the latest run.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from influence_cli.errors import DataError, InfluenceError
from influence_cli.recipe import Recipe, parse_recipe
from influence_cli.files import folder_lock, write_json

RUN_FILE = "run.json"


@dataclass(frozen=True)
class TaskTiming:
    """Wall time of one progress task (e.g. one checkpoint × split pass)."""

    task: str
    total: int
    seconds: float


def write_run_info(out: Path, command: str, recipe: Recipe, *, seconds: float,
                   checkpoints: Sequence[Any] = (), tasks: Sequence[TaskTiming] = ()) -> Path:
    """Add ``command``'s entry to ``out/run.json`` (created if absent); returns its path.

    ``checkpoints`` are objects with ``to_dict()`` (:class:`~influence_cli.session.CheckpointInfo`).
    """
    from influence_cli import __version__

    path = out / RUN_FILE
    with folder_lock(out):  # other commands may update the same run.json now
        previous = _read_or_empty(path)
        commands = dict(previous.get("commands", {}))
        commands[command] = {
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(seconds, 3),
            "argv": sys.argv[1:],
            "tasks": [{"task": t.task, "total": t.total, "seconds": round(t.seconds, 3)} for t in tasks],
        }
        info = {
            "version": __version__,
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


def _read_or_empty(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
