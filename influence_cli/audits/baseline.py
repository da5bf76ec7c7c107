"""The check baseline: flagged training examples a team has accepted, keyed by a stable id.

An example's id is ``sha256(inputs ‖ label)[:16]`` (hex) over the example's own content: every
input tensor's name, dtype, shape and raw bytes, then its label as JSON. It does not depend on the
example's position, so reordering or appending data keeps every id; changing an input or fixing a
label gives a new id. Identical duplicates share an id (accepting one accepts all of them).

The file (meant to be committed beside the recipe) is small, sorted JSON whose diff shows exactly
which accepted examples came and went, and what they are::

    {"format": "influence-cli-baseline", "version": 1, "id": "sha256(inputs, label)[:16]",
     "method": <mislabel method>, "entries": [{"id", "label", "label_name", "path" | "text"}, ...]}

sorted by id; ``label_name`` when the data names its classes, ``path`` (image files) or the first
:data:`TEXT_CHARS` characters of ``text`` when the data has them. Only ``id`` is read back, so
files written before those fields existed load as they are.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from influence_cli.errors import DataError
from influence_cli.files import write_json
from influence_cli.loading.examples import Examples, Inputs, described, shortened
from influence_cli.recipe import Recipe

FORMAT = "influence-cli-baseline"
VERSION = 1
ID_CHARS = 16
TEXT_CHARS = 80  # of an example's text kept in its baseline entry
_ID = re.compile(f"[0-9a-f]{{{ID_CHARS}}}")  # what example_id makes (and all that reports show)


def _tensor_bytes(name: str, t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    header = f"{name}|{t.dtype}|{tuple(t.shape)}|".encode()
    return header + t.reshape(-1).view(torch.uint8).numpy().tobytes()


def example_id(inputs: Inputs, label: Any) -> str:
    """The stable id of one example (``inputs`` without a batch dimension, ``label`` as JSON data)."""
    h = hashlib.sha256()
    items = sorted(inputs.items()) if isinstance(inputs, dict) else [("inputs", inputs)]
    for name, t in items:
        h.update(_tensor_bytes(name, t))
    h.update(b"label|" + json.dumps(label).encode())
    return h.hexdigest()[:ID_CHARS]


def example_ids(examples: Examples, indices: Sequence[int]) -> dict[int, str]:
    """Stable ids of the examples at ``indices``. Each example is read as a batch of one, so an
    input padded per batch (dynamic padding of text) carries no other example's padding."""
    ids: dict[int, str] = {}
    for i in indices:
        x, y = examples.batch(torch.tensor([int(i)]))
        one = {k: v[0] for k, v in x.items()} if isinstance(x, dict) else x[0]
        ids[int(i)] = example_id(one, _label(y[0]))
    return ids


def _label(y: torch.Tensor) -> Any:
    """A label as JSON data; an integer-valued float (a class index stored as float) is an int, so
    the id does not depend on the label tensor's dtype."""
    value = y.tolist()
    return int(value) if isinstance(value, float) and value.is_integer() else value


def entry(flagged: dict[str, Any], base_dir: Path | None = None) -> dict[str, Any]:
    """The baseline entry of a flagged example: its id and given label, and what a reviewer reads in
    the diff: the label's name, the file path (relative to ``base_dir``, the recipe's folder, when it
    lies below it, so the committed file is the same on every machine) or the start of the text."""
    out = {"id": flagged["id"], "label": flagged["given_label"]}
    if flagged.get("given_label_name") is not None:
        out["label_name"] = flagged["given_label_name"]
    found = described(flagged)
    if found is not None:
        out[found[0]] = shortened(flagged, TEXT_CHARS, whole_path=True)
    if found is not None and found[0] == "path" and base_dir is not None:
        path = Path(out["path"])
        out["path"] = path.relative_to(base_dir).as_posix() if path.is_relative_to(base_dir) else out["path"]
    return out


@dataclass(frozen=True)
class Baseline:
    """Accepted flagged examples: id → entry (``{"id", "label"}`` and the human fields of :func:`entry`)."""

    entries: dict[str, dict[str, Any]]
    method: str | None = None

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(self.entries)

    @classmethod
    def of(cls, flagged: Iterable[dict[str, Any]], method: str | None = None,
           base_dir: Path | None = None) -> "Baseline":
        """A baseline accepting every flagged example (mislabel ranking entries with their ``id``);
        paths relative to ``base_dir`` (see :func:`entry`)."""
        return cls({e["id"]: entry(e, base_dir) for e in flagged}, method)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "id": f"sha256(inputs, label)[:{ID_CHARS}]",
                "method": self.method, "entries": [self.entries[k] for k in sorted(self.entries)]}

    def save(self, path: Path) -> Path:
        """Write the sorted JSON atomically."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> "Baseline":
        """Read a baseline file; a missing or malformed file is a one-line :class:`DataError`."""
        if path.is_dir():
            raise DataError(f"{path}: the baseline must be a file, not a folder")
        if not path.is_file():
            raise DataError(f"{path}: baseline file not found; create it with `influence-cli check RECIPE "
                            "--update-baseline`")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: cannot read the baseline: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise DataError(f"{path}: not an influence-cli baseline (no \"format\": \"{FORMAT}\")")
        if data.get("version") != VERSION:
            raise DataError(f"{path}: baseline version {data.get('version')!r} is not supported (expected {VERSION})")
        entries = data.get("entries")
        if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("id"), str)
                                                    and _ID.fullmatch(e["id"]) for e in entries):
            raise DataError(f"{path}: \"entries\" must be a list of {{\"id\", \"label\"}} objects whose id is "
                            f"{ID_CHARS} hexadecimal digits")
        return cls({e["id"]: e for e in entries}, data.get("method"))


#: ``check(..., baseline=FROM_RECIPE)``: the recipe's ``checks.baseline`` file (none when unset).
FROM_RECIPE = "recipe"


def baseline_file(recipe: Recipe, baseline: Path | str | None = FROM_RECIPE) -> Path | None:
    """The baseline file a check uses: ``baseline`` when it is a path, the recipe's ``checks.baseline``
    (relative to the recipe) for :data:`FROM_RECIPE`, none for ``None``."""
    if baseline == FROM_RECIPE:
        named = recipe.checks.baseline if recipe.checks is not None else None
        return recipe.resolve(named) if named else None
    return None if baseline is None else Path(baseline)


def accepted_baseline(path: Path, *, from_recipe: bool) -> Baseline:
    """The baseline at ``path``. One named by the recipe's ``checks.baseline`` that does not exist yet
    is empty, said once: the recipe names the file before ``--update-baseline`` first writes it, and
    an empty baseline only makes the check stricter. A file named explicitly must exist (a wrong
    path there is a mistake to report, not a baseline to assume)."""
    if from_recipe and not path.exists() and not path.is_symlink():  # a dangling link is an error
        warnings.warn(f"checks.baseline {path} does not exist yet: no example is accepted; create it with "
                      "--update-baseline", UserWarning, stacklevel=3)
        return Baseline({})
    return Baseline.load(path)
