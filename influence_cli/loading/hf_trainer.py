"""The checkpoints of a ``transformers.Trainer`` run: ``<output_dir>/checkpoint-<step>/``.

Each folder holds the weights (``model.safetensors``; ``pytorch_model.bin`` only with
``trust_checkpoints: true``, since it is a pickle) and ``trainer_state.json``, whose
``log_history`` lists ``{"step": s, "learning_rate": η, ...}`` entries. With ``learning_rate:
auto`` the checkpoint at step S gets η_c = the ``learning_rate`` of the last entry with
``step ≤ S`` (the value logged at or just before S). The Trainer logs the rate the optimizer used
at that step, so η_c is exact when ``logging_steps`` divides ``save_steps`` and otherwise the rate
of the last logged step before the save.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from influence_cli.errors import CheckpointError
from influence_cli.loading.refs import CheckpointRef
from influence_cli.recipe import HFTrainerCheckpoints, Recipe

_FOLDER = re.compile(r"checkpoint-(\d+)")
STATE_FILE = "trainer_state.json"


def trainer_checkpoint_folders(run_dir: Path, key: str) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every ``checkpoint-<step>/`` in ``run_dir``, by increasing step."""
    if not run_dir.is_dir():
        raise CheckpointError(f"{key}: not a folder: {run_dir}")
    found = sorted((int(m.group(1)), d) for d in run_dir.iterdir()
                   if d.is_dir() and (m := _FOLDER.fullmatch(d.name)))
    if not found:
        raise CheckpointError(f"{key}: no checkpoint-<step>/ folder in {run_dir}")
    return found


def folder_hint(folder: Path) -> str:
    """A hint for a folder given where a checkpoint file belongs: the ``hf_trainer_dir`` form for
    a Trainer run or one of its ``checkpoint-<step>/`` folders, else the weights file inside it."""
    if _FOLDER.fullmatch(folder.name):
        return (f"; it looks like a transformers Trainer checkpoint: set `checkpoints: {{hf_trainer_dir: "
                f"{folder.parent}}}` to use every checkpoint-<step>/ of that run")
    try:
        runs = any(d.is_dir() and _FOLDER.fullmatch(d.name) for d in folder.iterdir())
    except OSError:
        runs = False
    if runs:
        return (f"; it holds transformers Trainer checkpoints: set `checkpoints: {{hf_trainer_dir: {folder}}}` "
                "to use every checkpoint-<step>/ in it")
    weights = [f for f in ("model.safetensors", "pytorch_model.bin") if (folder / f).is_file()]
    return f"; give the weights file inside it, {folder / weights[0]}" if weights else ""


def weights_file(folder: Path, *, trust: bool, where: str) -> Path:
    """The folder's ``model.safetensors``, or ``pytorch_model.bin`` when pickle is trusted."""
    safetensors, pickled = folder / "model.safetensors", folder / "pytorch_model.bin"
    if safetensors.is_file():
        return safetensors
    if (folder / "model.safetensors.index.json").is_file() or (folder / "pytorch_model.bin.index.json").is_file():
        raise CheckpointError(f"{where}: sharded checkpoints (*.index.json) are not supported; save with "
                              "a larger max_shard_size or merge the shards into model.safetensors")
    if pickled.is_file():
        if not trust:
            raise CheckpointError(f"{where}: only pytorch_model.bin (a pickle, which can run code) is there; "
                                  "set `trust_checkpoints: true` if you trust it, or save with safetensors")
        return pickled
    raise CheckpointError(f"{where}: no model.safetensors or pytorch_model.bin in {folder}")


def learning_rate_at(state_file: Path, step: int, where: str) -> float:
    """η at ``step``: the ``learning_rate`` of the last ``log_history`` entry with ``step ≤ step``."""
    if not state_file.is_file():
        raise CheckpointError(f"{where}: learning_rate is auto but {state_file} is missing; "
                              "set checkpoints.learning_rate in the recipe")
    try:
        history = json.loads(state_file.read_text()).get("log_history", [])
    except (json.JSONDecodeError, AttributeError) as exc:
        raise CheckpointError(f"{where}: {state_file} is not a trainer state JSON object: {exc}") from None
    logged = [(e["step"], float(e["learning_rate"])) for e in history
              if isinstance(e, dict) and isinstance(e.get("step"), int)
              and isinstance(e.get("learning_rate"), (int, float)) and e["step"] <= step]
    if not logged:
        raise CheckpointError(f"{where}: {state_file} logs no learning_rate at or before step {step}; "
                              "train with logging_steps ≤ save_steps or set checkpoints.learning_rate")
    return max(logged, key=lambda e: e[0])[1]


def list_trainer_checkpoints(spec: HFTrainerCheckpoints, recipe: Recipe) -> list[CheckpointRef]:
    """One :class:`CheckpointRef` per ``checkpoint-<step>/``, its learning rate resolved."""
    key = "checkpoints.hf_trainer_dir"
    folders = trainer_checkpoint_folders(recipe.resolve(spec.hf_trainer_dir), key)
    rates = spec.learning_rate
    if isinstance(rates, list) and len(rates) != len(folders):
        raise CheckpointError(f"checkpoints.learning_rate: {len(rates)} learning rates for {len(folders)} "
                              f"checkpoint folders in {spec.hf_trainer_dir}")
    refs = []
    for i, (step, folder) in enumerate(folders):
        where = f"{key}[{i}] ({folder})"
        lr = rates[i] if isinstance(rates, list) else rates
        source = "recipe" if lr != "auto" else STATE_FILE
        if lr == "auto":
            lr = learning_rate_at(folder / STATE_FILE, step, where)
        refs.append(CheckpointRef(weights_file(folder, trust=recipe.trust_checkpoints, where=where), lr,
                                  f"{key}[{i}]", learning_rate_source=source))
    return refs
