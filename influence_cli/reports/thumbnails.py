"""Thumbnails of examples for the HTML report, made from the dataset's own inputs.

:class:`ReportInputs` re-reads the train and test splits, through a recipe the user gave
(``report --recipe``, or the command's own with ``--html``) or else the one recorded in the
folder. A recorded recipe is data from wherever the folder came from, so it is only used when
re-reading it runs no code: formats ``tensors`` (``weights_only`` unpickling or safetensors),
``jsonl``/``csv`` (tokenizers load with ``trust_remote_code=False``), ``imagefolder``, and
``torchvision`` datasets other than :data:`UNPICKLING_DATASETS`; never ``factory``.

A text example (``jsonl``/``csv``) is shown as its own text, not its token ids. Any other input is
drawn as an image when it looks like one: a 2-D tensor (H×W), or 1×H×W / 3×H×W (channels first).
Each image is min–max scaled to [0, 1] on its own, x ↦ (x − min) / (max − min), and inlined as a
PNG ``data:`` URI. Anything else (feature vectors, token ids, dicts of tensors) becomes a short text.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from influence_cli.errors import DataError, InfluenceError, first_line
from influence_cli.loading.data import load_split
from influence_cli.loading.examples import Examples, Inputs
from influence_cli.recipe import FactoryData, Recipe, TorchvisionData
from influence_cli.reports.run_info import recipe_of

MAX_VALUES = 16  # values shown of a non-image input
# torchvision datasets that unpickle a file under their root unchecked (LSUN's key cache); CIFAR
# unpickles too, but only after checking every file's MD5 against torchvision's own list.
UNPICKLING_DATASETS = frozenset({"LSUN", "LSUNClass"})
SPLITS = ("train", "test")
# what reading moved, damaged or odd data raises (besides our own errors); the page then says why
READ_ERRORS = (InfluenceError, OSError, ValueError, TypeError, RuntimeError)


@dataclass(frozen=True)
class Thumbnail:
    """One example's picture (``image``: a PNG data URI) or, when it is not an image, ``text``."""

    image: str | None = None
    text: str | None = None


@dataclass
class ReportInputs:
    """The train and test splits re-read for the page, and the thumbnails drawn of them so far;
    ``note`` says why inputs are not shown."""

    train: Examples | None = None
    test: Examples | None = None
    note: str | None = None
    thumbs: dict[str, dict[int, Thumbnail]] = field(default_factory=lambda: {split: {} for split in SPLITS})

    @classmethod
    def load(cls, out: Path, run: dict[str, Any], docs: dict[str, dict[str, Any]],
             trusted: Recipe | None = None) -> "ReportInputs":
        """The splits of ``trusted`` when given, else of the recipe recorded in ``out`` if re-reading it
        runs no code; when they cannot be read, ``note`` says why (and how to show them)."""
        try:
            recipe = trusted or recorded_recipe(run, docs)
            test = load_split(recipe, "test") if recipe.data.test is not None else None
            return cls(load_split(recipe, "train"), test)
        except READ_ERRORS as exc:
            hint = "" if trusted else f"; to show them: influence-cli report {out} --recipe RECIPE"
            return cls(note=f"inputs not shown: {_reason(exc)}{hint}")

    def fetch(self, wanted: dict[str, set[int]]) -> None:
        """Draw the thumbnails of the ``wanted`` indices of each split; a split whose examples
        cannot be read (moved or damaged files) leaves a ``note`` instead."""
        for split in SPLITS:
            examples = getattr(self, split)
            if examples is None or not wanted[split]:
                continue
            try:
                self.thumbs[split] = thumbnails(examples, wanted[split])
            except READ_ERRORS as exc:
                self.note = f"{split} inputs not shown: reading them failed: {_reason(exc)}"


def _reason(exc: Exception) -> str:
    return exc.message if isinstance(exc, InfluenceError) else f"{type(exc).__name__}: {first_line(exc)}"


def recorded_recipe(run: dict[str, Any], docs: dict[str, dict[str, Any]]) -> Recipe:
    """The recipe recorded in a results folder (run.json, else a report's ``recipe``), refused when
    re-reading its data could run code named in the folder (see the module docstring)."""
    fallback = next((d["recipe"] for d in docs.values() if isinstance(d.get("recipe"), dict)), None)
    recipe = recipe_of(run, fallback)
    for split in SPLITS:
        spec = getattr(recipe.data, split)
        if isinstance(spec, FactoryData):
            what = f"format factory ({spec.factory!r})"
        elif isinstance(spec, TorchvisionData) and spec.name in UNPICKLING_DATASETS:
            what = f"torchvision {spec.name}, which unpickles files under its root"
        else:
            continue
        raise DataError(f"data.{split} of the recorded recipe is {what}; report never runs code named "
                        "by the folder it renders")
    return recipe


def thumbnails(examples: Examples, indices: Iterable[int], batch_size: int = 256) -> dict[int, Thumbnail]:
    """Thumbnails of the examples at ``indices`` (each fetched once, in batches); a text example's is
    its whole text."""
    wanted = sorted({int(i) for i in indices if 0 <= int(i) < len(examples)})
    if examples.describe_key == "text":
        return {i: Thumbnail(text=examples.describe(i, limit=None)) for i in wanted}
    out: dict[int, Thumbnail] = {}
    for start in range(0, len(wanted), batch_size):
        idx = torch.tensor(wanted[start:start + batch_size], dtype=torch.long)
        inputs, _ = examples.batch(idx)
        for row, i in enumerate(idx.tolist()):
            out[i] = thumbnail(_row(inputs, row))
    return out


def thumbnail(x: torch.Tensor | dict[str, torch.Tensor]) -> Thumbnail:
    """A single example's thumbnail (no batch dimension)."""
    if isinstance(x, dict):
        return Thumbnail(text=_dict_text(x))
    picture = as_image(x)
    if picture is not None:
        return Thumbnail(image=png_data_uri(picture))
    return Thumbnail(text=_values_text(x))


def as_image(x: torch.Tensor) -> np.ndarray | None:
    """``x`` as an H×W or H×W×3 array in [0, 1] when it is an image, else ``None``."""
    if not isinstance(x, torch.Tensor) or not (x.is_floating_point() or x.dtype == torch.uint8):
        return None
    if x.dim() == 3 and x.shape[0] in (1, 3):
        x = x[0] if x.shape[0] == 1 else x.permute(1, 2, 0)
    elif x.dim() != 2:
        return None
    if min(x.shape[:2]) < 2:
        return None
    a = x.detach().to(torch.float64).cpu().numpy()
    lo, hi = float(a.min()), float(a.max())
    return np.full_like(a, 0.5) if hi <= lo or not np.isfinite(hi - lo) else (a - lo) / (hi - lo)


def png_data_uri(picture: np.ndarray) -> str:
    """A PNG ``data:`` URI of an H×W (grey) or H×W×3 array in [0, 1]."""
    from matplotlib.image import imsave

    buf = io.BytesIO()
    imsave(buf, picture, cmap="gray", vmin=0.0, vmax=1.0, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _row(inputs: Inputs, row: int) -> torch.Tensor | dict[str, torch.Tensor]:
    return {k: v[row] for k, v in inputs.items()} if isinstance(inputs, dict) else inputs[row]


def _values_text(x: torch.Tensor) -> str:
    flat = x.detach().flatten().cpu()
    shown = " ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in flat[:MAX_VALUES].tolist())
    more = f" … ({flat.numel()} values, shape {tuple(x.shape)})" if flat.numel() > MAX_VALUES else ""
    return shown + more


def _dict_text(x: dict[str, torch.Tensor]) -> str:
    """Token ids and other fields; positions with ``attention_mask == 0`` (padding) are dropped."""
    mask = x.get("attention_mask")
    parts = []
    for key, value in x.items():
        if "mask" in key or "token_type" in key:
            continue
        if mask is not None and value.shape == mask.shape:
            value = value[mask.bool()]
        parts.append(f"{key}: {_values_text(value)}")
    return "; ".join(parts)
