"""Text data of causal language models (``model.task: causal-lm``): next-token targets.

Rows are tokenised once, when the split loads. A ``text`` row is encoded as the tokenizer does
(with its special tokens, e.g. a BOS) and every token counts; a ``prompt`` + ``completion`` row is
encode(prompt) followed by encode(completion) without special tokens, and only the completion's
tokens count. A row is cut to ``max_length`` tokens (``truncation``). The targets of example i are
its ids with the uncounted tokens at −100 (:data:`IGNORED_TOKEN`), padded with −100 to the longest
row: ``labels`` is [N, T_max] and the ``token_nll`` loss shifts it by one position, so the first
token (no context) is never predicted. A row with nothing to predict is an error.

Batches are padded on the right to their longest row (``input_ids`` and a 0/1 ``attention_mask``):
positions stay 0, 1, ... and, under the causal mask, no counted token attends to the padding, so
each example's gradient equals that of the example alone, unpadded (tested against the reference).
Under ``vmap`` the mask becomes a prepared causal 4D mask (:mod:`influence_cli.gradients.per_example`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from influence_cli.errors import DataError, RecipeError
from influence_cli.loading.examples import DESCRIBE_CHARS, Examples
from influence_cli.loading.transformers import describe_text, load_tokenizer, read_rows, read_texts
from influence_cli.recipe import Recipe, TextData

#: target id of a token that is not scored (prompt, padding), as in transformers' ``labels``
IGNORED_TOKEN = -100


@dataclass
class CausalTextExamples(Examples):
    """Token sequences with next-token targets; reports show the text (``prompt || completion``)."""

    ids: list[list[int]]
    targets: torch.Tensor  # [N, T_max]: the ids, IGNORED_TOKEN where not counted
    texts: list[str]
    prompts: list[str] | None
    pad_id: int
    name: str = "data"
    describe_key = "text"

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def labels(self) -> torch.Tensor:
        return self.targets

    def label_fields(self, key: str, label: Any) -> dict[str, Any]:
        """Nothing: the targets are the text itself, not a class."""
        return {}

    def _fetch(self, idx: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        rows = [self.ids[i] for i in idx.tolist()]
        width = max(map(len, rows), default=0)
        ids = torch.tensor([r + [self.pad_id] * (width - len(r)) for r in rows], dtype=torch.long)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long)
        return {"input_ids": ids.reshape(-1, width), "attention_mask": mask.reshape(-1, width)}, self.targets[idx]

    def describe(self, i: int, limit: int | None = DESCRIBE_CHARS) -> str | None:
        """The row's text (``prompt || completion``), whitespace collapsed, cut at ``limit`` characters."""
        return describe_text(self.texts[i] if self.prompts is None else f"{self.prompts[i]} || {self.texts[i]}",
                             limit)


def _encode(tokenizer: Any, texts: list[str], special: bool) -> list[list[int]]:
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=special)["input_ids"]] if texts else []


def _targets(ids: list[list[int]], skipped: list[int], key: str) -> torch.Tensor:
    """[N, T_max] next-token targets: the ids with the first ``skipped[i]`` tokens and the padding ignored."""
    targets = torch.full((len(ids), max(map(len, ids), default=0)), IGNORED_TOKEN, dtype=torch.long)
    for i, (row, skip) in enumerate(zip(ids, skipped)):
        if len(row) <= max(skip, 1):
            what = "completion tokens" if skip else "tokens (one has no context)"
            raise DataError(f"{key}: row {i} has no token to predict: {len(row) - skip} {what} "
                            "after tokenisation and truncation")
        targets[i, skip:len(row)] = torch.tensor(row[skip:])
    return targets


def load_causal_text(spec: TextData, recipe: Recipe, key: str) -> CausalTextExamples:
    """A ``jsonl``/``csv`` split of ``text`` (or ``prompt`` + ``completion``) rows for a causal LM."""
    if spec.text_pair_column is not None:
        raise RecipeError(f"{key}.text_pair_column: not used by a causal-lm model (give prompt and completion "
                          "columns)")
    path = recipe.resolve(spec.path)
    rows = read_rows(path, spec.format, key)
    paired = bool(rows) and spec.completion_column in rows[0]
    texts = (read_texts(rows, spec.completion_column, "completion_column", key, path) if paired else
             read_texts(rows, spec.text_column, "text_column", key, path))
    prompts = read_texts(rows, spec.prompt_column, "prompt_column", key, path) if paired else None
    tokenizer, _ = load_tokenizer(spec, recipe, key)
    if prompts is None:
        ids, skipped = _encode(tokenizer, texts, True), [0] * len(texts)
    else:
        heads = _encode(tokenizer, prompts, True)
        ids = [h + c for h, c in zip(heads, _encode(tokenizer, texts, False))]
        skipped = [len(h) for h in heads]
    if spec.truncation:
        ids = [row[:spec.max_length] for row in ids]
    pad_id = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
    return CausalTextExamples(ids, _targets(ids, skipped, key), texts, prompts, pad_id, name=key)
