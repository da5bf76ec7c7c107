"""Per-example gradients (``vmap(grad)``) of a small BERT with eager vs SDPA attention.

A 2-layer, 128-wide BERT for sequence classification, 64 sequences of 64 tokens (every other one
padded from position 40), batches of 32, all parameters, float32 on the CPU. Prints the seconds
for the 64 examples after one warm-up batch. Under ``vmap`` PyTorch has no batching rule for the
fused SDPA CPU kernel and falls back to a loop (with a warning); the gradients are the same.
Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_attention.py``.
"""

from __future__ import annotations

import time
import warnings

import torch
from transformers import BertConfig, BertForSequenceClassification

from influence_cli.gradients.layers import select_parameters
from influence_cli.gradients.per_example import PerExampleGradients
from influence_cli.losses import BUILTIN_LOSSES


def main() -> None:
    warnings.filterwarnings("ignore", message="There is a performance drop")
    torch.manual_seed(0)
    ids = torch.randint(5, 1000, (64, 64))
    mask = torch.ones_like(ids)
    mask[::2, 40:] = 0
    labels = torch.randint(0, 2, (64,))
    for attention in ("eager", "sdpa"):
        config = BertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=256, max_position_embeddings=64, attn_implementation=attention)
        model = BertForSequenceClassification(config).eval()
        grads = PerExampleGradients(model, select_parameters(model, None), BUILTIN_LOSSES["cross_entropy"])
        weights = {k: v.detach() for k, v in model.state_dict().items()}
        grads(weights, {"input_ids": ids[:32], "attention_mask": mask[:32]}, labels[:32])  # warm-up
        start = time.perf_counter()
        for s in range(0, 64, 32):
            grads(weights, {"input_ids": ids[s:s + 32], "attention_mask": mask[s:s + 32]}, labels[s:s + 32])
        print(f"{attention}: {time.perf_counter() - start:.2f} s for 64 examples")


if __name__ == "__main__":
    main()
