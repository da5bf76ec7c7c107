"""Hugging Face transformers models and text data, strictly offline.

- ``model: {transformers: DIR, task, kwargs}``: the config of the local folder ``DIR``
  (``AutoConfig``, ``local_files_only``), ``kwargs`` overriding its settings, gives an untrained
  ``AutoModelForSequenceClassification`` (``task: sequence-classification``, the default) or
  ``AutoModelForCausalLM`` (``task: causal-lm``, its text data in
  :mod:`influence_cli.loading.causal_lm`); the checkpoints supply the weights.
  Attention defaults to ``eager``: ``vmap`` has no batching rule for PyTorch's fused CPU
  attention kernel and falls back to a per-example loop with a warning (measured 0.70–0.72 s
  eager vs 0.74–0.88 s sdpa per 64 examples, 2-layer 128-wide BERT, T = 64, one CPU thread);
  ``attn_implementation: sdpa`` in ``kwargs`` gives the same gradients (tested).
- ``format: jsonl | csv`` data: one text (and optionally a text pair) and a label per row. Each
  batch is tokenised when it is fetched, padded to its own longest sequence (dynamic padding)
  and truncated to ``max_length``. String labels go through the config's ``label2id``.
"""

from __future__ import annotations

import csv
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from influence_cli.errors import DataError, RecipeError, first_line
from influence_cli.loading.examples import DESCRIBE_CHARS, Examples, shorten
from influence_cli.recipe import Recipe, TextData


def _local_folder(path: Path, key: str) -> Path:
    if not path.is_dir():
        raise RecipeError(f"{key}: not a local folder: {path} (nothing is downloaded)")
    return path


def load_config(recipe: Recipe) -> Any:
    """The ``model.transformers`` folder's config with ``model.kwargs`` applied (attention: eager)."""
    from transformers import AutoConfig

    assert recipe.model.transformers is not None
    folder = _local_folder(recipe.resolve(recipe.model.transformers), "model.transformers")
    # never the folder's own code (config.json auto_map), even if model.kwargs asks for it
    overrides = {"attn_implementation": "eager", **recipe.model.kwargs, "trust_remote_code": False}
    try:
        config, unused = AutoConfig.from_pretrained(str(folder), local_files_only=True, return_unused_kwargs=True,
                                                    **overrides)
    except (OSError, ValueError) as exc:
        raise RecipeError(f"model.transformers: cannot read a model config in {folder}: "
                          f"{first_line(exc)}") from None
    if unused:
        raise RecipeError(f"model.kwargs.{next(iter(unused))}: not a setting of the {config.model_type} config")
    return config


#: ``model.task`` → the transformers auto class that builds its head
AUTO_CLASSES = {"sequence-classification": "AutoModelForSequenceClassification", "causal-lm": "AutoModelForCausalLM"}


def _auto_class(task: str | None) -> Any:
    import transformers

    return getattr(transformers, AUTO_CLASSES[task or "sequence-classification"])


def build_transformers_model(recipe: Recipe) -> nn.Module:
    """An untrained ``AutoModelFor<task>`` from the recipe's local config (never downloads)."""
    config = load_config(recipe)
    try:
        return _auto_class(recipe.model.task).from_config(config)
    except ValueError as exc:
        raise RecipeError(f"model.task: {config.model_type} has no {recipe.model.task} head: "
                          f"{first_line(exc)}") from None


def _forward_inputs(config: Any, task: str | None) -> set[str] | None:
    """The keyword arguments the ``task`` model's ``forward`` accepts."""
    try:
        cls = _auto_class(task)._model_mapping[type(config)]
    except KeyError:
        return None
    return set(inspect.signature(cls.forward).parameters)


@dataclass
class TextExamples(Examples):
    """Texts (and optional pairs) with labels, tokenised per batch with dynamic padding."""

    texts: list[str]
    pairs: list[str] | None
    labels_: torch.Tensor
    tokenizer: Any
    max_length: int
    truncation: bool
    input_names: tuple[str, ...]
    name: str = "data"
    classes: list[str] | None = None
    describe_key = "text"

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def labels(self) -> torch.Tensor:
        return self.labels_

    def _fetch(self, idx: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        rows = idx.tolist()
        encoded = self.tokenizer([self.texts[i] for i in rows],
                                 None if self.pairs is None else [self.pairs[i] for i in rows],
                                 padding="longest", truncation=self.truncation, max_length=self.max_length,
                                 return_tensors="pt")
        return {k: encoded[k] for k in self.input_names if k in encoded}, self.labels_[idx]

    def describe(self, i: int, limit: int | None = DESCRIBE_CHARS) -> str | None:
        """The row's text (``text || pair`` for pairs), whitespace collapsed, cut at ``limit`` characters."""
        return describe_text(self.texts[i] if self.pairs is None else f"{self.texts[i]} || {self.pairs[i]}", limit)


def describe_text(text: str, limit: int | None) -> str:
    """``text`` with its whitespace collapsed, cut at ``limit`` characters (``None``: whole)."""
    text = " ".join(text.split())
    return text if limit is None else shorten(text, limit)


def read_rows(path: Path, fmt: str, key: str) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"{key}.path: file not found: {path}")
    if fmt == "csv":
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{key}.path: {path}:{lineno}: not valid JSON: {exc.msg}") from None
        if not isinstance(row, dict):
            raise DataError(f"{key}.path: {path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def _column(rows: list[dict[str, Any]], column: str, option: str, key: str, path: Path) -> list[Any]:
    for i, row in enumerate(rows):
        if row.get(column) is None:
            raise DataError(f"{key}.{option}: row {i} of {path} has no {column!r} value "
                            f"(columns: {', '.join(row) or 'none'})")
    return [row[column] for row in rows]


def _label_ids(values: list[Any], label2id: dict[str, int], key: str) -> torch.Tensor:
    """Class ids: a string label through ``label2id`` (else read as an integer), ints as they are."""
    out = []
    for i, value in enumerate(values):
        if isinstance(value, str) and value in label2id:
            out.append(int(label2id[value]))
        elif isinstance(value, int) and not isinstance(value, bool):
            out.append(value)
        elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
            out.append(int(value))
        else:
            known = ", ".join(map(str, label2id)) or "none"
            raise DataError(f"{key}.label_column: label {value!r} of row {i} is not a class id or a name in the "
                            f"model config's label2id ({known})")
    return torch.tensor(out, dtype=torch.long)


def _class_names(config: Any, values: list[Any]) -> list[str] | None:
    """Class names by id: the config's ``id2label``, with the ``label2id`` names the data's string
    labels went through; transformers' placeholders (``LABEL_0``, ...) only when the data uses them."""
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    strings = {v for v in values if isinstance(v, str)}
    used = {v: int(i) for v, i in (getattr(config, "label2id", None) or {}).items() if v in strings}
    names = {**id2label, **{i: v for v, i in used.items()}}
    if not names or sorted(names) != list(range(len(names))):
        return None
    if not used and all(n == f"LABEL_{i}" for i, n in names.items()):
        return None
    return [names[i] for i in range(len(names))]


def load_tokenizer(spec: TextData, recipe: Recipe, key: str) -> tuple[Any, str]:
    """The tokenizer of ``spec.tokenizer`` (else the model folder) and the recipe key that named it."""
    from transformers import AutoTokenizer

    if spec.tokenizer is None and recipe.model.transformers is None:
        raise RecipeError(f"{key}.tokenizer: format {spec.format} needs a tokenizer: set model.transformers "
                          f"or {key}.tokenizer to a local tokenizer folder")
    tok_key = f"{key}.tokenizer" if spec.tokenizer else "model.transformers"
    folder = _local_folder(recipe.resolve(spec.tokenizer or recipe.model.transformers or ""), tok_key)
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False), tok_key
    except (OSError, ValueError) as exc:
        raise RecipeError(f"{tok_key}: cannot load a tokenizer from {folder}: "
                          f"{first_line(exc)}") from None


def read_texts(rows: list[dict[str, Any]], column: str, option: str, key: str, path: Path) -> list[str]:
    """Column ``column`` of every row as text (a row without it is an error naming ``option``)."""
    return [str(t) for t in _column(rows, column, option, key, path)]


def load_text(spec: TextData, recipe: Recipe, key: str) -> TextExamples:
    """A ``jsonl``/``csv`` split tokenised by the model folder's (or ``tokenizer``'s) tokenizer."""
    path = recipe.resolve(spec.path)
    rows = read_rows(path, spec.format, key)
    texts = read_texts(rows, spec.text_column, "text_column", key, path)
    pairs = (None if spec.text_pair_column is None else
             read_texts(rows, spec.text_pair_column, "text_pair_column", key, path))
    labels = _column(rows, spec.label_column, "label_column", key, path)
    tokenizer, tok_key = load_tokenizer(spec, recipe, key)
    config = load_config(recipe) if recipe.model.transformers else None
    if tokenizer.pad_token is None:
        raise DataError(f"{tok_key}: the tokenizer in {tokenizer.name_or_path} has no pad token, needed to pad "
                        "batches")
    accepted = _forward_inputs(config, recipe.model.task) if config is not None else None
    names = tuple(n for n in tokenizer.model_input_names if accepted is None or n in accepted)
    label2id = dict(getattr(config, "label2id", None) or {})
    return TextExamples(texts, pairs, _label_ids(labels, label2id, key), tokenizer, spec.max_length,
                        spec.truncation, names, name=key, classes=_class_names(config, labels))
