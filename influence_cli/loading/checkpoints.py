"""Checkpoints: find them, read them safely, resolve their learning rates, fit them to the model.

Formats understood:

- a plain state dict (``.pt``/``.pth``/``.bin``, every value a tensor);
- a training dict with ``model_state_dict``, ``state_dict`` or ``model``, optionally with
  ``optimizer_state_dict`` (or ``optimizer``/``optimizer_states``) and ``learning_rate``/``lr``;
- a ``.safetensors`` state dict;
- a PyTorch Lightning ``.ckpt`` (``state_dict`` and ``optimizer_states``): ``strip_prefix`` keeps
  the keys of one LightningModule attribute (``model.``) and strips that prefix;
- the ``checkpoint-<step>/`` folders of a ``transformers.Trainer`` run
  (:mod:`influence_cli.loading.hf_trainer`).

Files load with ``torch.load(weights_only=True)``; a file that needs pickle is refused unless the
recipe sets ``trust_checkpoints: true``. Whether a refused file needs pickle or is corrupt is
decided by parsing its pickle opcodes (:func:`needs_pickle`, which runs nothing), not by
PyTorch's wording. A ``module.`` prefix (DataParallel/DDP) is stripped. Every floating tensor the
model takes (weights and buffers such as BatchNorm running statistics) must be finite in the
model's dtype.
"""

from __future__ import annotations

import glob as globlib
import math
import pickle
import pickletools
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Mapping

import torch
from torch import nn

from influence_cli.errors import CheckpointError, RecipeError, first_line
from influence_cli.loading.hf_trainer import folder_hint, list_trainer_checkpoints
from influence_cli.loading.inputs import file_sha256
from influence_cli.loading.learning_rates import Rate, learning_rate_in
from influence_cli.loading.refs import CheckpointRef
from influence_cli.recipe import CheckpointGlob, HFTrainerCheckpoints, Recipe

_STATE_KEYS = ("model_state_dict", "state_dict", "model")
_LEGACY_PICKLES = 5  # a pre-zip torch.save: magic number, protocol, sys info, the object, storage keys


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: its weights and its learning rate η_c."""

    path: Path
    learning_rate: float
    state: dict[str, torch.Tensor]
    sha256: str
    learning_rate_source: str = "recipe"  # see :mod:`influence_cli.loading.learning_rates`


def _natural_key(path: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def list_checkpoints(recipe: Recipe) -> list[CheckpointRef]:
    """The recipe's checkpoints in order; a glob is expanded in natural order (2 before 10)."""
    spec = recipe.checkpoints
    if isinstance(spec, HFTrainerCheckpoints):
        return list_trainer_checkpoints(spec, recipe)
    if not isinstance(spec, CheckpointGlob):
        refs = [CheckpointRef(recipe.resolve(c.path), c.learning_rate, f"checkpoints[{i}]", c.strip_prefix)
                for i, c in enumerate(spec)]
    else:
        paths = sorted(globlib.glob(str(recipe.resolve(spec.glob))), key=_natural_key)
        if not paths:
            raise RecipeError(f"checkpoints.glob: no file matches {spec.glob!r} in {recipe.base_dir}")
        rates = spec.learning_rate
        if isinstance(rates, list):
            if len(rates) != len(paths):
                raise RecipeError(f"checkpoints.learning_rate: {len(rates)} learning rates for "
                                  f"{len(paths)} checkpoints matching {spec.glob!r}")
        else:
            rates = [rates] * len(paths)
        refs = [CheckpointRef(Path(p), lr, f"checkpoints.glob[{i}]", spec.strip_prefix)
                for i, (p, lr) in enumerate(zip(paths, rates))]
    for ref in refs:
        if ref.path.is_dir():
            raise CheckpointError(f"{ref.where}: is a folder, not a checkpoint file{folder_hint(ref.path)}")
        if not ref.path.is_file():
            raise CheckpointError(f"{ref.where}: file not found")
    return refs


def _pickles_parse(stream: IO[bytes], count: int) -> bool:
    """Whether ``stream`` holds up to ``count`` consecutive well-formed pickles (at least one),
    checked opcode by opcode with :mod:`pickletools`, which never imports or calls anything."""
    for i in range(count):
        if i and not stream.peek(1):  # type: ignore[attr-defined]
            break
        try:
            for _ in pickletools.genops(stream):
                pass
        except Exception:  # pickletools raises ValueError and friends on any malformed opcode or argument
            return False
    return True


def needs_pickle(path: Path) -> bool:
    """Whether a file that ``torch.load(weights_only=True)`` refused needs the full unpickler (a
    well-formed torch archive or pickle naming more than tensors), rather than being corrupt or in
    another format. Decided without PyTorch's wording and without running the pickle."""
    try:
        if not zipfile.is_zipfile(path):
            with open(path, "rb") as fh:
                return _pickles_parse(fh, _LEGACY_PICKLES)
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
            if not names:
                return False
            with archive.open(names[0]) as fh:
                return _pickles_parse(fh, 1)
    except (OSError, zipfile.BadZipFile):
        return False


def _read(ref: CheckpointRef, trust: bool) -> Any:
    if ref.path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(ref.path), device="cpu")
        except Exception as exc:
            raise CheckpointError(f"{ref.where}: not a readable safetensors file: {exc}") from None
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise before a refusal
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(ref.path, map_location="cpu", weights_only=not trust)
    except Exception as exc:
        reason = torch_load_failure(ref.path, exc, what="readable PyTorch checkpoint", trust=trust,
                                    pickle_hint="set `trust_checkpoints: true` in the recipe if you trust it")
        raise CheckpointError(f"{ref.where}: {reason}") from None


def torch_load_failure(path: Path, exc: Exception, *, what: str, pickle_hint: str, trust: bool = False) -> str:
    """Why ``torch.load(path)`` raised ``exc``, in this project's words (never PyTorch's advice to
    set ``weights_only=False``): empty, unreadable, needs pickle (then ``pickle_hint``), cannot be
    unpickled (only when pickle is trusted), or not ``what`` (corrupt or another format)."""
    if isinstance(exc, OSError):
        return f"cannot read the file: {exc.strerror or exc}"
    if path.stat().st_size == 0:
        return "the file is empty (0 bytes)"
    if isinstance(exc, pickle.UnpicklingError) and not trust and needs_pickle(path):
        return f"the file needs pickle to load, which can run code; {pickle_hint}"
    if trust and isinstance(exc, (pickle.UnpicklingError, ImportError, AttributeError)):
        return f"cannot unpickle: {type(exc).__name__}: {first_line(exc)}"
    return f"not a {what} (corrupt or another format)"


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def _select_prefix(state: Mapping[str, torch.Tensor], prefix: str, where: str) -> dict[str, torch.Tensor]:
    """The keys starting with ``prefix``, stripped; other keys (other attributes of a
    LightningModule, e.g. a loss's buffers) are dropped. No key with the prefix is an error."""
    kept = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not kept:
        raise CheckpointError(f"{where}: strip_prefix {prefix!r} matches no state-dict key "
                              f"(keys look like {next(iter(state))!r})")
    return kept


def load_checkpoint(ref: CheckpointRef, *, trust: bool = False) -> Checkpoint:
    """Read one checkpoint and resolve its learning rate (``auto``: from the file, else an error)."""
    obj = _read(ref, trust)
    if _is_state_dict(obj):
        state, container = obj, {}
    elif isinstance(obj, Mapping):
        found = [k for k in _STATE_KEYS if _is_state_dict(obj.get(k))]
        if not found:
            raise CheckpointError(f"{ref.where}: no state dict found (expected a plain state dict or "
                                  f"one of the keys {', '.join(_STATE_KEYS)})")
        state, container = obj[found[0]], obj
    else:
        raise CheckpointError(f"{ref.where}: holds a {type(obj).__name__}, not a state dict")
    auto = ref.learning_rate == "auto"
    rate = learning_rate_in(container) if auto else Rate(float(ref.learning_rate), ref.learning_rate_source)
    if rate is None:
        raise CheckpointError(f"{ref.where}: learning_rate is auto but the file has no numeric "
                              "learning_rate/lr key, scheduler or optimizer state; set learning_rate in the recipe")
    if not (math.isfinite(rate.value) and rate.value >= 0):
        raise CheckpointError(f"{ref.where}: the file's learning rate is {rate.value}; it must be finite and ≥ 0 "
                              "(set learning_rate in the recipe)")
    if ref.strip_prefix:
        state = _select_prefix(state, ref.strip_prefix, ref.where)
    return Checkpoint(ref.path, float(rate.value), _strip_prefix(state, "module."), file_sha256(ref.path),
                      rate.source)


def fit_to_model(model: nn.Module, ckpt: Checkpoint, where: str) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors for every parameter and persistent buffer of ``model``.

    Missing or unexpected keys, shape mismatches and non-finite values (NaN or inf, also after the
    cast to the model's dtype) are errors naming the first offender. A tied tensor (a language
    model's output layer sharing its embedding) is taken under its first name only, so a file may
    omit its other names (as transformers' ``save_pretrained`` does).
    """
    aliases = tied_aliases(model)
    expected = {k: v for k, v in model.state_dict().items() if k not in aliases}
    missing = [k for k in expected if k not in ckpt.state]
    unexpected = [k for k in ckpt.state if k not in expected and k not in aliases]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) the model needs, e.g. {missing[0]!r}")
        if unexpected:
            parts.append(f"{len(unexpected)} key(s) the model does not have, e.g. {unexpected[0]!r}")
        raise CheckpointError(f"{where}: does not fit the model: {'; '.join(parts)}")
    for name, tensor in expected.items():
        got = ckpt.state[name]
        if got.shape != tensor.shape:
            raise CheckpointError(f"{where}: {name} has shape {tuple(got.shape)} but the model "
                                  f"expects {tuple(tensor.shape)}")
        if got.is_floating_point() != tensor.is_floating_point():
            raise CheckpointError(f"{where}: {name} holds {got.dtype} values but the model expects "
                                  f"{tensor.dtype}")
        _check_finite(got, tensor.dtype, f"{where}: {name}")
    return {k: ckpt.state[k] for k in expected}


def tied_aliases(model: nn.Module) -> set[str]:
    """State-dict names of tensors already listed under an earlier name (tied weights)."""
    seen: set[int] = set()
    aliases = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            aliases.add(name)
        seen.add(id(tensor))
    return aliases


def _check_finite(got: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """Refuse NaN/inf values in a floating tensor, and finite ones that overflow ``dtype``: one
    :func:`torch.isfinite` pass (and one more after the cast when ``dtype`` is narrower)."""
    if not got.is_floating_point():
        return
    bad = int((~torch.isfinite(got)).sum())
    if bad:
        raise CheckpointError(f"{what} has {bad} non-finite value{'s' if bad > 1 else ''} (NaN or inf)")
    if torch.finfo(dtype).max < torch.finfo(got.dtype).max:
        bad = int((~torch.isfinite(got.to(dtype))).sum())
        if bad:
            raise CheckpointError(f"{what} has {bad} value{'s' if bad > 1 else ''} too large for the model's "
                                  f"dtype {str(dtype).removeprefix('torch.')}")
