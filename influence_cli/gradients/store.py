"""A resumable on-disk store of training-side gradients (``cache_dir:`` in the recipe).

Layout::

    <cache_dir>/<recipe key>/manifest.json
    <cache_dir>/<recipe key>/<checkpoint sha256>/<batch key>.safetensors

- The **recipe key** hashes everything that changes a training gradient except the checkpoint:
  model, training data, loss, layers, factorisation, with the content hash of every file they
  name (data files, the ``file.py`` of model/data/loss callables),
  projection (dim and seed), dtype and the store format version. ``manifest.json`` records it.
- Each **checkpoint** has its own folder named by its content hash (``session.checkpoints[c].sha256``),
  so a changed checkpoint invalidates only its own shards.
- A **curvature fit** (``ekfac``/``arnoldi``) at a checkpoint is ``<checkpoint sha256>/curvature-<hash>.safetensors``,
  the hash over the method and its settings (``curvature:``, batch size, layers); it verifies itself
  like a shard.
- A **shard** is one training batch's unweighted gradients g_c(z) at one checkpoint (projected
  [B, Σ_l k_l] rows, or per-layer factors a, e and dense blocks), named by a hash of the batch's
  training indices. It is written to a ``.part`` file and renamed, so a killed run leaves only
  complete shards and the next run resumes from them with identical results; another ``score``
  with different test examples reuses every shard.

Every shard verifies itself: its metadata holds a sha256 of its place in the store (recipe key,
checkpoint, batch key), its layout metadata and every tensor (name, dtype, shape, bytes). A shard
that cannot be parsed or whose checksum does not match (damaged bytes, or a shard copied over
another's name) is recomputed and overwritten, with one warning naming it. ``manifest.json`` is
a readable copy of the recipe key for people; nothing is read from it (the folder name is the
key's hash), so an edited or damaged manifest is rewritten, with one warning, and the shards stay
usable.

The per-layer weights w_l of GAS/GAS-L are recomputed from the stored gradients, so one store
serves every method.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from influence_cli.errors import GradientError, RecipeError, first_line
from influence_cli.gradients.factors import Factors, LayerGrads
from influence_cli.gradients.layers import ParamLayout
from influence_cli.gradients.per_example import FlatGrads, GradientBatch

from influence_cli.loading.inputs import code_inputs, content_digest, data_inputs
from influence_cli.recipe import Recipe
from influence_cli.recipe.schema import SKETCH_VERSION

FORMAT_VERSION = 2  # 2: every shard carries its checksum


def _digest(text: str | bytes, n: int = 16) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()[:n]


def encode(grads: GradientBatch) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, string metadata) describing ``grads`` completely, layout included."""
    def own(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu").contiguous().clone()

    lay = grads.layout
    meta: dict[str, Any] = {"layout": [lay.names, lay.sizes, lay.layer_names, lay.slices]}
    if isinstance(grads, FlatGrads):
        meta["kind"] = "flat"
        return {"g": own(grads.g)}, {"meta": json.dumps(meta)}
    assert isinstance(grads, LayerGrads)
    meta["kind"], meta["blocks"] = "layers", []
    tensors = {}
    for l, block in enumerate(grads.blocks):
        if isinstance(block, Factors):
            tensors[f"{l}.a"], tensors[f"{l}.e"] = own(block.a), own(block.e)
            meta["blocks"].append({"factors": True, "bias": block.bias, "transposed": block.transposed})
        else:
            tensors[f"{l}.g"] = own(block)
            meta["blocks"].append({"factors": False})
    return tensors, {"meta": json.dumps(meta)}


def _checksum(where: str, tensors: dict[str, torch.Tensor], meta: str) -> str:
    """sha256 of a shard's place in the store (``where``), its layout metadata and every tensor
    (name, dtype, shape and bytes), so that damaged bytes and a shard moved to another name both fail."""
    digest = hashlib.sha256(f"{where}\n{meta}\n".encode())
    for name in sorted(tensors):
        t = tensors[name]
        digest.update(f"{name} {t.dtype} {tuple(t.shape)}\n".encode())
        digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def decode(tensors: dict[str, torch.Tensor], metadata: dict[str, str], device: torch.device) -> GradientBatch:
    """The inverse of :func:`encode`, on ``device``."""
    meta = json.loads(metadata["meta"])
    names, sizes, layer_names, slices = meta["layout"]
    layout = ParamLayout(tuple(names), tuple(sizes), tuple(layer_names), tuple(tuple(s) for s in slices))
    # A copy on the CPU: a tensor read at an arbitrary file offset may be misaligned, and kernels then
    # take another path (scores one ulp off a fresh computation).
    t = {k: v.to(device, non_blocking=True) if device.type != "cpu" else v.clone() for k, v in tensors.items()}
    if meta["kind"] == "flat":
        return FlatGrads(t["g"], layout)
    blocks = [Factors(t[f"{l}.a"], t[f"{l}.e"], b["bias"], b.get("transposed", False)) if b["factors"] else t[f"{l}.g"]
              for l, b in enumerate(meta["blocks"])]
    return LayerGrads(blocks, layout)


def store_key(recipe: Recipe) -> dict[str, Any]:
    """What the training gradients depend on, apart from the checkpoints: the recipe's model,
    training data, loss, layers, factorisation, projection and dtype, with the content hash of
    every file they name (data files; ``file.py`` of model/data/loss callables), so an edited
    ``models.py`` or a rewritten data file never reuses stale gradients."""
    train = recipe.data.train.model_dump(mode="json")
    model = recipe.model.model_dump(mode="json")
    files = {i.what: content_digest(i) for i in data_inputs(recipe, recipe.data.train, "training") + code_inputs(recipe)}
    return {"model": model, "train": train, "train_files": files,
            "loss": recipe.loss, "layers": recipe.layers, "factorize": recipe.factorize, "dtype": recipe.dtype,
            "projection": None if recipe.projection is None else {**recipe.projection.model_dump(mode="json"),
                                                                   "sketch": SKETCH_VERSION}}


class GradientStore:
    """Shards of training gradients under ``root / <recipe key>``; see the module docstring."""

    def __init__(self, root: Path, key: dict[str, Any]) -> None:
        self.key = {**key, "format": FORMAT_VERSION}
        text = json.dumps(self.key, sort_keys=True, default=str)
        self.dir = root / _digest(text)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._write_manifest()
        except OSError as exc:
            raise RecipeError(f"cache_dir: cannot create the gradient store in {root}: {exc.strerror or exc}") from None
        self.hits = 0
        self.misses = 0

    def _write_manifest(self) -> None:
        """Write ``manifest.json`` unless it already holds the key; rewrite an edited or damaged one
        with a warning (nothing is read from it: every shard verifies itself)."""
        manifest = self.dir / "manifest.json"
        text = json.dumps(self.key, indent=1, sort_keys=True, default=str) + "\n"
        if manifest.is_file():
            try:
                if json.loads(manifest.read_bytes()) == json.loads(text):
                    return
            except (OSError, ValueError):
                pass
            warnings.warn(f"{manifest}: edited or damaged; rewriting it (the shards are checked one by one "
                          "and stay usable)", stacklevel=3)
        tmp = manifest.with_name(f"manifest.json.{os.getpid()}.part")
        tmp.write_text(text)
        os.replace(tmp, manifest)

    def shard(self, checkpoint_sha256: str, indices: torch.Tensor) -> Path:
        """Where the gradients of training examples ``indices`` at that checkpoint live."""
        batch = _digest(indices.to(torch.int64).cpu().contiguous().numpy().tobytes())
        return self.dir / checkpoint_sha256 / f"{batch}.safetensors"

    def _where(self, path: Path) -> str:
        return path.relative_to(self.dir.parent).as_posix()

    def _verified(self, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]] | str:
        """The shard's (tensors, metadata) if its checksum holds, else what is wrong with it."""
        try:
            with safe_open(str(path), framework="pt") as fh:
                metadata = fh.metadata() or {}
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as exc:  # safetensors' own error, OSError, ValueError: all mean unusable
            return f"unreadable: {type(exc).__name__}: {first_line(exc)}"
        meta = metadata.get("meta")
        if meta is None or metadata.get("sha256") != _checksum(self._where(path), tensors, meta):
            return "checksum mismatch: damaged, edited, or copied from another shard"
        return tensors, metadata

    def _read(self, path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
        """A verified file's (tensors, metadata), or ``None`` when it is missing or fails its checksum
        (then with a warning naming it: the caller recomputes and saves it again)."""
        found = self._verified(path) if path.exists() else None
        if isinstance(found, str):
            warnings.warn(f"{path}: damaged {what} ({found}); recomputing and replacing it", stacklevel=3)
        if not isinstance(found, tuple):
            self.misses += 1
            return None
        self.hits += 1
        return found

    def _write(self, path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], what: str) -> Path:
        """Write one file with its checksum, atomically (``.part`` + rename)."""
        metadata["sha256"] = _checksum(self._where(path), tensors, metadata["meta"])
        tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(tmp), metadata=metadata)
            os.replace(tmp, path)
        except OSError as exc:
            raise GradientError(f"{path}: cannot write the {what} ({exc.strerror or exc}); check "
                                "cache_dir or run with --no-cache") from None
        return path

    def load(self, checkpoint_sha256: str, indices: torch.Tensor, device: torch.device) -> GradientBatch | None:
        """The stored gradients, or ``None`` when this shard has not been computed yet or fails its
        checksum (then with a warning naming it; the caller recomputes and saves it again)."""
        found = self._read(self.shard(checkpoint_sha256, indices), "gradient shard")
        return None if found is None else decode(*found, device)

    def save(self, checkpoint_sha256: str, indices: torch.Tensor, grads: GradientBatch) -> Path:
        """Write one shard with its checksum, atomically (``.part`` + rename)."""
        tensors, metadata = encode(grads)
        return self._write(self.shard(checkpoint_sha256, indices), tensors, metadata, "gradient shard")

    def fit(self, checkpoint_sha256: str, name: str) -> Path:
        """Where a curvature fit at that checkpoint lives; ``name`` describes it completely (method, settings)."""
        return self.dir / checkpoint_sha256 / f"curvature-{_digest(name)}.safetensors"

    def load_fit(self, checkpoint_sha256: str, name: str, device: torch.device) -> dict[str, torch.Tensor] | None:
        """A stored curvature fit's tensors on ``device``, or ``None`` (missing, or damaged: warned)."""
        found = self._read(self.fit(checkpoint_sha256, name), "curvature fit")
        if found is None or found[1]["meta"] != name:  # (a hash collision of two settings: refit)
            return None
        return {k: v.to(device) for k, v in found[0].items()}

    def save_fit(self, checkpoint_sha256: str, name: str, tensors: dict[str, torch.Tensor]) -> Path:
        """Write a curvature fit (its tensors and ``name``) with its checksum, atomically."""
        own = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
        return self._write(self.fit(checkpoint_sha256, name), own, {"meta": name}, "curvature fit")
