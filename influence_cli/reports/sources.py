"""The files ``report`` reads from an output folder, checked before anything is drawn.

A results folder is data from wherever it came from (a downloaded CI artefact, a colleague's
run). Each file the page uses must be a JSON object with the keys and types the page reads;
otherwise :func:`read_sources` raises a one-line :class:`DataError` naming the file and the key
(``mislabels.json: ranking[3].train_index: expected a non-negative integer, got "7"``). Keys the
page does not read are not checked, and values it only shows (labels, texts, paths) may be
anything: the page escapes them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from influence_cli.errors import DataError
from influence_cli.reports.ground_truth import GROUND_TRUTH
from influence_cli.reports.run_info import RUN_FILE, read_json_object

Index = Annotated[int, Field(ge=0)]


class _Doc(BaseModel):
    """Strict types (``"3"`` is not an index, ``1`` is not ``true``); other keys are allowed."""

    model_config = ConfigDict(strict=True, extra="allow")


class _Checkpoint(_Doc):
    path: str | None = None
    sha256: str | None = None


class _Report(_Doc):
    """What every command's report may carry besides its results."""

    method: str | None = None
    recipe: dict[str, Any] | None = None
    checkpoints: list[_Checkpoint] | None = None


class _Neighbour(_Doc):
    """A proponent, opponent or suspect of a test example."""

    train_index: Index
    score: float | None = None


class _Explained(_Doc):
    test_index: Index
    proponents: list[_Neighbour]
    opponents: list[_Neighbour]


class InfluenceFile(_Report):
    test: list[_Explained]


class _Ranked(_Doc):
    rank: int
    train_index: Index
    score: float | None = None
    flagged: bool = False


class MislabelsFile(_Report):
    ranking: list[_Ranked]
    flag_rule: dict[str, Any] | None = None


class _Candidate(_Doc):
    test_index: Index
    rank: int
    anomaly_score: float
    flagged: bool = False
    suspects: list[_Neighbour] = []


class TargetsFile(_Report):
    test: list[_Candidate]


class _Rule(_Doc):
    rule: str
    passed: bool


class ChecksFile(_Report):
    passed: bool
    rules: list[_Rule]
    new_flagged: list[_Neighbour] = []


class _Task(_Doc):
    task: str
    total: int
    seconds: float


class _Command(_Doc):
    seconds: float = 0.0
    tasks: list[_Task] = []


class RunFile(_Doc):
    version: str | None = None
    recipe_path: str | None = None
    base_dir: str | None = None
    recipe: dict[str, Any] | None = None
    checkpoints: list[_Checkpoint] = []
    commands: dict[str, _Command] = {}


class TruthFile(_Doc):
    flipped_train_indices: list[Index] = []
    target_test_indices: list[Index] = []
    poison_train_indices: list[Index] = []


SOURCES: dict[str, tuple[str, type[_Doc]]] = {
    "checks": ("check.json", ChecksFile), "influence": ("influence.json", InfluenceFile),
    "mislabels": ("mislabels.json", MislabelsFile), "targets": ("targets.json", TargetsFile)}


@dataclass(frozen=True)
class Sources:
    """The checked files of a folder as plain data: the reports by section, run.json and the ground truth."""

    docs: dict[str, dict[str, Any]]
    run: dict[str, Any]
    truth: dict[str, Any]


def read_sources(out: Path) -> Sources:
    """Read and check every file the report of ``out`` uses; at least one report must be there."""
    if not out.is_dir():
        raise DataError(f"{out}: no such folder")
    docs = {name: _checked(out / file, model) for name, (file, model) in SOURCES.items() if (out / file).is_file()}
    if not docs:
        raise DataError(f"{out}: nothing to report: none of {', '.join(f for f, _ in SOURCES.values())} is there")
    optional = {file: _checked(out / file, model) if (out / file).is_file() else {}
                for file, model in ((RUN_FILE, RunFile), (GROUND_TRUTH, TruthFile))}
    return Sources(docs, optional[RUN_FILE], optional[GROUND_TRUTH])


def _checked(path: Path, model: type[_Doc]) -> dict[str, Any]:
    """The JSON object in ``path`` once it fits ``model``; else a :class:`DataError` naming the file and key."""
    data = read_json_object(path)
    try:
        model.model_validate(data)
    except ValidationError as exc:
        raise DataError(f"{path}: {_problem(exc.errors()[0])}") from None
    return data


_EXPECTED = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false",
             "string_type": "a string", "list_type": "a list", "dict_type": "an object", "model_type": "an object",
             "greater_than_equal": "a non-negative integer"}


def _problem(error: ErrorDetails) -> str:
    """``key.path: expected X, got Y`` (or ``missing``) in one line."""
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" if re.fullmatch(r"[\w-]+", p) else f"[{p!r}]"
                    for p in error["loc"]).lstrip(".")
    if error["type"] == "missing":
        return f"{where}: missing"
    expected = _EXPECTED.get(error["type"], error["msg"])
    return f"{where}: expected {expected}, got {_shown(error['input'])}"


def _shown(value: Any) -> str:
    """A JSON value as the message shows it: a scalar as written (at most 40 characters), else its kind."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:39] + "…"
