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
- A **shard** is one training batch's unweighted gradients g_c(z) at one checkpoint (projected
  [B, Σ_l k_l] rows, or per-layer factors a, e and dense blocks), named by a hash of the batch's
  training indices. It is written to a ``.part`` file and renamed, so a killed run leaves only
  complete shards and the next run resumes from them with identical results; another ``score``
  with different test examples reuses every shard.

The per-layer weights w_l of GAS/GAS-L are recomputed from the stored gradients, so one store
serves every method.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from influence_cli.errors import GradientError, RecipeError
from influence_cli.gradients.factorized import Factors, LayerGrads
from influence_cli.gradients.layers import ParamLayout
from influence_cli.gradients.per_example import FlatGrads, GradientBatch
from influence_cli.recipe import Recipe

FORMAT_VERSION = 1


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
            meta["blocks"].append({"factors": True, "bias": block.bias})
        else:
            tensors[f"{l}.g"] = own(block)
            meta["blocks"].append({"factors": False})
    return tensors, {"meta": json.dumps(meta)}


def decode(tensors: dict[str, torch.Tensor], metadata: dict[str, str], device: torch.device) -> GradientBatch:
    """The inverse of :func:`encode`, on ``device``."""
    meta = json.loads(metadata["meta"])
    names, sizes, layer_names, slices = meta["layout"]
    layout = ParamLayout(tuple(names), tuple(sizes), tuple(layer_names), tuple(tuple(s) for s in slices))
    t = {k: v.to(device, non_blocking=True) for k, v in tensors.items()}
    if meta["kind"] == "flat":
        return FlatGrads(t["g"], layout)
    blocks = [Factors(t[f"{l}.a"], t[f"{l}.e"], b["bias"]) if b["factors"] else t[f"{l}.g"]
              for l, b in enumerate(meta["blocks"])]
    return LayerGrads(blocks, layout)


def _named_files(recipe: Recipe, *sections: dict[str, Any] | str) -> dict[str, str]:
    """sha256 of every existing file the given recipe values name: data files, and the
    ``file.py`` of ``file.py:callable`` references (model and data factories, a custom loss)."""
    from influence_cli.loading.checkpoints import file_sha256

    values = [v for sec in sections for v in (sec.values() if isinstance(sec, dict) else [sec])]
    files = {}
    for value in values:
        if not isinstance(value, str) or not value:
            continue
        ref, sep, _ = value.rpartition(":")
        path = ref if sep and ref.endswith(".py") else value
        if recipe.resolve(path).is_file():
            files[path] = file_sha256(recipe.resolve(path))
    return files


def store_key(recipe: Recipe) -> dict[str, Any]:
    """What the training gradients depend on, apart from the checkpoints: the recipe's model,
    training data, loss, layers, factorisation, projection and dtype, with the content hash of
    every file they name (data files; ``file.py`` of model/data/loss callables), so an edited
    ``models.py`` or a rewritten data file never reuses stale gradients."""
    train = recipe.data.train.model_dump(mode="json")
    model = recipe.model.model_dump(mode="json")
    files = _named_files(recipe, train, model, recipe.loss)
    return {"model": model, "train": train, "train_files": files,
            "loss": recipe.loss, "layers": recipe.layers, "factorize": recipe.factorize, "dtype": recipe.dtype,
            "projection": None if recipe.projection is None else recipe.projection.model_dump(mode="json")}


class GradientStore:
    """Shards of training gradients under ``root / <recipe key>``; see the module docstring."""

    def __init__(self, root: Path, key: dict[str, Any]) -> None:
        self.key = {**key, "format": FORMAT_VERSION}
        text = json.dumps(self.key, sort_keys=True, default=str)
        self.dir = root / _digest(text)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RecipeError(f"cache_dir: cannot create the gradient store in {root}: {exc.strerror or exc}") from None
        manifest = self.dir / "manifest.json"
        if not manifest.exists():
            tmp = manifest.with_name(f"manifest.json.{os.getpid()}.part")
            tmp.write_text(json.dumps(self.key, indent=1, sort_keys=True, default=str) + "\n")
            os.replace(tmp, manifest)
        self.hits = 0
        self.misses = 0

    def shard(self, checkpoint_sha256: str, indices: torch.Tensor) -> Path:
        """Where the gradients of training examples ``indices`` at that checkpoint live."""
        batch = _digest(indices.to(torch.int64).cpu().contiguous().numpy().tobytes())
        return self.dir / checkpoint_sha256 / f"{batch}.safetensors"

    def load(self, checkpoint_sha256: str, indices: torch.Tensor, device: torch.device) -> GradientBatch | None:
        """The stored gradients, or ``None`` when this shard has not been computed yet."""
        path = self.shard(checkpoint_sha256, indices)
        if not path.exists():
            self.misses += 1
            return None
        try:
            with safe_open(str(path), framework="pt") as fh:
                metadata = fh.metadata()
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise GradientError(f"{path}: unreadable gradient shard ({exc}); delete it or run with --no-cache"
                                ) from None
        self.hits += 1
        return decode(tensors, metadata, device)

    def save(self, checkpoint_sha256: str, indices: torch.Tensor, grads: GradientBatch) -> Path:
        """Write one shard atomically (``.part`` + rename)."""
        path = self.shard(checkpoint_sha256, indices)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors, metadata = encode(grads)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
        return path
