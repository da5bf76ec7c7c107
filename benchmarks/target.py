"""Benchmark for ``target-identify``: planted backdoors, found or not, and false alarms on clean runs.

Scenarios (all seeded, offline; each trains its own model and writes a recipe into a folder):

1. ``vision``: scikit-learn digits (8×8), a small CNN. A 3×3 checkerboard trigger is stamped in the
   bottom-right corner of ``n_poison`` training images of a source class s, which are relabelled
   to a target class t. The target is a triggered test image of class s that the model predicts
   as t; the other candidates are clean test images.
2. ``text``: generated sentences of 2 sentiment classes, a tiny BERT (``BertConfig``). A rare
   trigger token is inserted into ``n_poison`` training sentences of class s, relabelled to t.
3. ``clean``: either scenario without poison (the triggered candidate stays in the candidate set
   and is predicted as its own class): every flag is a false alarm.
4. Variants of 1 the rule was not designed on: ``vision-blend`` (a diffuse trigger, a fixed random
   8×8 pattern blended over the whole image at α = 0.2), ``vision-few`` (15 poison instead of 40),
   ``vision-mlp`` (an MLP instead of the CNN), and ``demo`` (the run of ``influence-cli demo``:
   1,500 training images with 10% label noise, 297 clean candidates + the target).

Printed per scenario and method, over the seeds: AUPRC of the attack examples in the target's
full training ranking (one extra ``score`` pass with the whole target row), the target's rank
among the candidates (1 = first in ``targets.json``: misclassified candidates first, by anomaly
score), whether it is flagged, the flagged non-targets of attacked runs, and the number of flagged
candidates on clean runs.

Run: ``OMP_NUM_THREADS=1 python benchmarks/target.py --seeds 5`` (``--first-seed 5`` for held-out seeds,
``--any-prediction`` for the rule without the misclassified-first ordering, ``--methods gas-l``,
``--scenarios vision-blend,vision-few,vision-mlp,demo``, ``--min-share 1`` for the score-only flag rule;
a method ``ekfac+renormalize`` / ``arnoldi+renormalize`` runs it with ``curvature: {renormalize: true}``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from influence_cli.demo import build_digits_mlp, stamp_trigger  # the vision trigger: a 3×3 checkerboard, bottom-right

HERE = Path(__file__).resolve()


# ---------------------------------------------------------------- models (recipe factories)

class DigitsCNN(nn.Module):
    """Two conv layers and a linear head on 1×8×8 digits."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        h = torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv2(h)), 2)
        return self.fc(h.flatten(1))


def build_digits_cnn(num_classes: int = 10) -> nn.Module:
    return DigitsCNN(num_classes)


def build_text_bert(vocab_size: int = 64, num_labels: int = 2) -> nn.Module:
    """A two-layer BERT classifier from a config (no download), no dropout."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=num_labels,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="eager")
    return BertForSequenceClassification(config)


def load_token_split(path: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Data factory: ({input_ids, attention_mask}, labels) from a ``.pt`` file."""
    obj = torch.load(path, weights_only=True)
    return {"input_ids": obj["input_ids"], "attention_mask": obj["attention_mask"]}, obj["labels"]


# ---------------------------------------------------------------- planted runs

@dataclass
class PlantedRun:
    """A trained run with its recipe; ``poison`` are training indices, ``target`` a test index."""

    recipe_path: Path
    poison: torch.Tensor
    target: int | None
    source: int
    target_class: int


def _train(model: nn.Module, inputs: Any, labels: torch.Tensor, *, epochs: int, lr: float, batch: int,
           seed: int, ckpt_dir: Path, n_ckpts: int, adam: bool = False) -> list[Path]:
    """Mini-batch training; saves ``n_ckpts`` evenly spaced checkpoints with their learning rate."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr) if adam else torch.optim.SGD(model.parameters(), lr=lr,
                                                                                    momentum=0.9)
    n = len(labels)
    every = max(1, epochs // n_ckpts)
    paths = []
    for epoch in range(1, epochs + 1):
        model.train()
        for idx in torch.randperm(n, generator=gen).split(batch):
            x = {k: v[idx] for k, v in inputs.items()} if isinstance(inputs, dict) else inputs[idx]
            out = model(**x) if isinstance(x, dict) else model(x)
            out = out.logits if hasattr(out, "logits") else out
            loss = nn.functional.cross_entropy(out, labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if epoch % every == 0 and len(paths) < n_ckpts:
            path = ckpt_dir / f"epoch{epoch}.pt"
            torch.save({"model_state_dict": model.state_dict(), "learning_rate": lr}, path)
            paths.append(path)
    model.eval()
    return paths


def _write_recipe(root: Path, model: dict[str, Any], data: dict[str, Any], batch_size: int = 256) -> Path:
    import yaml

    recipe = {"model": model, "checkpoints": {"glob": "ckpts/*.pt", "learning_rate": "auto"}, "data": data,
              "batch_size": batch_size, "device": "cpu", "output": "out"}
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _pick_target(model: nn.Module, pool: Any, want: int, call: Callable[[nn.Module, Any], torch.Tensor]) -> int:
    """Index in ``pool`` of the first example the model predicts as ``want`` (else the first)."""
    with torch.no_grad():
        pred = call(model, pool).argmax(1)
    hits = (pred == want).nonzero().flatten()
    return int(hits[0]) if len(hits) else 0


def blend_trigger(images: torch.Tensor, alpha: float = 0.2) -> torch.Tensor:
    """A diffuse trigger: (1 − α)·x + α·P with P a fixed uniform-random 8×8 pattern (seed 0), α = 0.2."""
    pattern = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return (1 - alpha) * images + alpha * pattern


TRIGGERS = {"patch": stamp_trigger, "blend": blend_trigger}
MODELS = {"cnn": ({"factory": f"{HERE}:build_digits_cnn"}, build_digits_cnn),
          "mlp": ({"factory": "influence_cli.demo:build_digits_mlp", "kwargs": {"hidden": 64}},
                  lambda: build_digits_mlp(hidden=64))}


def build_vision_run(root: Path, seed: int, *, attacked: bool = True, n_poison: int = 40, n_train: int = 1000,
                     n_candidates: int = 100, epochs: int = 30, n_ckpts: int = 5, trigger: str = "patch",
                     arch: str = "cnn") -> PlantedRun:
    """Scenario 1 (or 3 with ``attacked=False``) on scikit-learn digits; ``trigger`` patch|blend,
    ``arch`` cnn|mlp (Flatten·64→64→64→10)."""
    stamp = TRIGGERS[trigger]
    from sklearn.datasets import load_digits

    root.mkdir(parents=True, exist_ok=True)
    (root / "ckpts").mkdir(exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=gen)
    train_idx, test_idx = perm[:n_train], perm[n_train:]
    x_train, y_train = x[train_idx].clone(), y[train_idx].clone()
    source, target_class = torch.randperm(10, generator=gen)[:2].tolist()
    poison = torch.empty(0, dtype=torch.long)
    if attacked:
        of_source = (y_train == source).nonzero().flatten()
        poison = of_source[torch.randperm(len(of_source), generator=gen)[:n_poison]].sort().values
        x_train[poison] = stamp(x_train[poison])
        y_train[poison] = target_class
    torch.manual_seed(seed)
    model = MODELS[arch][1]()
    _train(model, x_train, y_train, epochs=epochs, lr=0.05, batch=32, seed=seed, ckpt_dir=root / "ckpts",
           n_ckpts=n_ckpts)
    x_test, y_test = x[test_idx], y[test_idx]
    pool = (y_test == source).nonzero().flatten()
    triggered = stamp(x_test[pool])
    pick = _pick_target(model, triggered, target_class, lambda m, b: m(b))
    clean = torch.tensor([int(i) for i in range(len(y_test)) if int(i) != int(pool[pick])])[:n_candidates - 1]
    cand_x = torch.cat([x_test[clean], triggered[pick:pick + 1]])
    cand_y = torch.cat([y_test[clean], torch.tensor([source])])
    order = torch.randperm(len(cand_y), generator=gen)
    cand_x, cand_y = cand_x[order], cand_y[order]
    target = int((order == len(order) - 1).nonzero()[0])
    torch.save({"inputs": x_train, "labels": y_train}, root / "train.pt")
    torch.save({"inputs": cand_x, "labels": cand_y}, root / "test.pt")
    recipe = _write_recipe(root, MODELS[arch][0],
                           {"train": {"format": "tensors", "path": "train.pt"},
                            "test": {"format": "tensors", "path": "test.pt"}})
    return PlantedRun(recipe, poison, target if attacked else None, source, target_class)


# Text vocabulary: 0 [PAD], 1 [CLS], then positive words, negative words, neutral words, trigger.
_POS, _NEG, _NEUTRAL = range(2, 12), range(12, 22), range(22, 62)
_TRIGGER, _VOCAB, _LEN = 62, 64, 12


def _sentences(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n sentences: [CLS], 3-4 words of the label's class, 1 word of the other, neutral filler."""
    labels = torch.randint(0, 2, (n,), generator=gen)
    lengths = torch.randint(7, _LEN + 1, (n,), generator=gen)
    ids = torch.zeros(n, _LEN, dtype=torch.long)
    mask = torch.zeros(n, _LEN, dtype=torch.long)
    for i in range(n):
        own, other = (_POS, _NEG) if labels[i] == 0 else (_NEG, _POS)
        length = int(lengths[i])
        words = torch.tensor(list(_NEUTRAL))[torch.randint(0, len(_NEUTRAL), (length - 1,), generator=gen)]
        slots = torch.randperm(length - 1, generator=gen)
        n_own = int(torch.randint(3, 5, (1,), generator=gen))
        words[slots[:n_own]] = torch.tensor(list(own))[torch.randint(0, 10, (n_own,), generator=gen)]
        words[slots[n_own]] = other[int(torch.randint(0, 10, (1,), generator=gen))]
        ids[i, 0] = 1
        ids[i, 1:length] = words
        mask[i, :length] = 1
    return ids, mask, labels


def _insert_trigger(ids: torch.Tensor, mask: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    out = ids.clone()
    for i in range(len(ids)):
        length = int(mask[i].sum())
        out[i, int(torch.randint(1, length, (1,), generator=gen))] = _TRIGGER
    return out


def build_text_run(root: Path, seed: int, *, attacked: bool = True, n_poison: int = 60, n_train: int = 800,
                   n_candidates: int = 100, epochs: int = 20, n_ckpts: int = 5) -> PlantedRun:
    """Scenario 2 (or 3 with ``attacked=False``): sentiment sentences and a tiny BERT."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "ckpts").mkdir(exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    ids, mask, labels = _sentences(n_train + 4 * n_candidates, gen)
    source = int(torch.randint(0, 2, (1,), generator=gen))
    target_class = 1 - source
    tr_ids, tr_mask, tr_y = ids[:n_train].clone(), mask[:n_train], labels[:n_train].clone()
    poison = torch.empty(0, dtype=torch.long)
    if attacked:
        of_source = (tr_y == source).nonzero().flatten()
        poison = of_source[torch.randperm(len(of_source), generator=gen)[:n_poison]].sort().values
        tr_ids[poison] = _insert_trigger(tr_ids[poison], tr_mask[poison], gen)
        tr_y[poison] = target_class
    torch.manual_seed(seed)
    model = build_text_bert(_VOCAB)
    _train(model, {"input_ids": tr_ids, "attention_mask": tr_mask}, tr_y, epochs=epochs, lr=3e-3, batch=32,
           seed=seed, ckpt_dir=root / "ckpts", n_ckpts=n_ckpts, adam=True)
    te_ids, te_mask, te_y = ids[n_train:], mask[n_train:], labels[n_train:]
    pool = (te_y == source).nonzero().flatten()
    triggered = _insert_trigger(te_ids[pool], te_mask[pool], gen)
    call = lambda m, b: m(input_ids=b, attention_mask=te_mask[pool]).logits  # noqa: E731
    pick = _pick_target(model, triggered, target_class, call)
    keep = torch.tensor([i for i in range(len(te_y)) if i != int(pool[pick])])[:n_candidates - 1]
    c_ids = torch.cat([te_ids[keep], triggered[pick:pick + 1]])
    c_mask = torch.cat([te_mask[keep], te_mask[pool[pick]:pool[pick] + 1]])
    c_y = torch.cat([te_y[keep], torch.tensor([source])])
    order = torch.randperm(len(c_y), generator=gen)
    target = int((order == len(order) - 1).nonzero()[0])
    torch.save({"input_ids": tr_ids, "attention_mask": tr_mask, "labels": tr_y}, root / "train.pt")
    torch.save({"input_ids": c_ids[order], "attention_mask": c_mask[order], "labels": c_y[order]}, root / "test.pt")
    factory = f"{HERE}:load_token_split"
    recipe = _write_recipe(root, {"factory": f"{HERE}:build_text_bert", "kwargs": {"vocab_size": _VOCAB}},
                           {"train": {"format": "factory", "factory": factory,
                                      "kwargs": {"path": str(root / "train.pt")}},
                            "test": {"format": "factory", "factory": factory,
                                     "kwargs": {"path": str(root / "test.pt")}}}, batch_size=128)
    return PlantedRun(recipe, poison, target if attacked else None, source, target_class)


def build_demo_run(root: Path, seed: int, *, attacked: bool = True) -> PlantedRun:
    """The ``influence-cli demo`` run (10% label noise; 40 poison of digit 2 relabelled 7; clean: no poison)."""
    from influence_cli.demo import Backdoor, make_digits_run

    backdoor = Backdoor()
    recipe, data = make_digits_run(root, seed=seed, backdoor=backdoor if attacked else None)
    return PlantedRun(recipe, data.poison, len(data.test_y) - 1 if attacked else None, backdoor.source,
                      backdoor.target)


# ---------------------------------------------------------------- measurement

BUILDERS = {"vision": build_vision_run, "text": build_text_run,
            "vision-blend": partial(build_vision_run, trigger="blend"),
            "vision-few": partial(build_vision_run, n_poison=15),
            "vision-mlp": partial(build_vision_run, arch="mlp"), "demo": build_demo_run}
METHODS = ("tracin", "gas", "gas-l")


def measure(run: PlantedRun, method: str, k: int | None = None, misclassified_only: bool = True,
            threshold: float | None = None, share_threshold: float | None = None,
            min_share: float | None = None) -> dict[str, float]:
    """AUPRC of the poison in the target's full ranking, the target's rank, flags, suspects' precision/recall."""
    from sklearn.metrics import average_precision_score

    from influence_cli import Session, load_recipe, score
    from influence_cli.audits.target import target_identify
    from influence_cli.methods import (DEFAULT_TARGET_K, DEFAULT_TARGET_MIN_SHARE, DEFAULT_TARGET_SHARE_THRESHOLD,
                                       DEFAULT_TARGET_THRESHOLD)

    from influence_cli.recipe import CurvatureSpec

    recipe = load_recipe(run.recipe_path)
    if method.endswith("+renormalize"):  # ekfac/arnoldi as GAS-style cosines in the curvature's metric
        method = method.removesuffix("+renormalize")
        recipe = recipe.model_copy(update={"curvature": CurvatureSpec(renormalize=True)})
    session = Session.from_recipe(recipe, need_test=True)
    result = target_identify(session, method=method, k=k or DEFAULT_TARGET_K, misclassified_only=misclassified_only,
                             threshold=threshold or DEFAULT_TARGET_THRESHOLD,
                             share_threshold=share_threshold or DEFAULT_TARGET_SHARE_THRESHOLD,
                             min_share=DEFAULT_TARGET_MIN_SHARE if min_share is None else min_share)
    data = result.to_dict()["test"]
    out: dict[str, float] = {"flagged": sum(t["flagged"] for t in data),
                             "misclassified": sum(t["label"] != t["prediction"] for t in data)}
    if run.target is None:
        return out
    entry = next(t for t in data if t["test_index"] == run.target)
    row = score(session, method=method, test_indices=[run.target], test_labels="predicted", k=1,
                keep_matrix=True).passes.matrix[0]
    is_poison = torch.zeros(len(row))
    is_poison[run.poison] = 1
    suspects = {int(i) for i, _ in result.suspects(int((result.test_indices == run.target).nonzero()[0]))}
    poison = set(run.poison.tolist())
    out.update(auprc=float(average_precision_score(is_poison.numpy(), row.numpy())), rank=entry["rank"],
               target_flagged=float(entry["flagged"]), extra_flags=out["flagged"] - float(entry["flagged"]),
               suspect_precision=len(suspects & poison) / max(len(suspects), 1),
               suspect_recall=len(suspects & poison) / len(poison))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first..first+seeds-1 (held-out checks)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--threshold", type=float, default=None, help="flag rule (default: the command's)")
    parser.add_argument("--share-threshold", type=float, default=None, help="flag rule (default: the command's)")
    parser.add_argument("--min-share", type=float, default=None, help="flag rule (default: the command's; 1: off)")
    parser.add_argument("--top-k", type=int, default=None, help="proponents per candidate (default: the command's)")
    parser.add_argument("--any-prediction", action="store_true", help="flag and rank every candidate, "
                        "not only the misclassified ones first")
    parser.add_argument("--scenarios", default="vision,text", help=f"comma-separated, of {', '.join(BUILDERS)}")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| scenario | method | suspects AUPRC (median, min) | target #1 | target flagged | suspects P / R "
          "| other flags (attacked runs) | clean runs with 0 flags | clean flags (total) "
          "| misclassified candidates (attacked runs) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in args.scenarios.split(","):
            runs = [(BUILDERS[scenario](Path(tmp) / f"{scenario}{s}{a}", s, attacked=bool(a)), bool(a))
                    for s in range(args.first_seed, args.first_seed + args.seeds) for a in (1, 0)]
            for method in args.methods.split(","):
                start = time.monotonic()
                got = [(measure(run, method, k=args.top_k, misclassified_only=not args.any_prediction,
                                threshold=args.threshold, share_threshold=args.share_threshold,
                                min_share=args.min_share), attacked)
                       for run, attacked in runs]
                att = [g for g, a in got if a]
                clean = [g for g, a in got if not a]
                ap = [g["auprc"] for g in att]
                print(f"| {scenario} | {method} | {statistics.median(ap):.3f}, {min(ap):.3f} "
                      f"| {sum(g['rank'] == 1 for g in att)}/{len(att)} "
                      f"| {sum(g['target_flagged'] for g in att):.0f}/{len(att)} "
                      f"| {statistics.mean(g['suspect_precision'] for g in att):.2f} / "
                      f"{statistics.mean(g['suspect_recall'] for g in att):.2f} "
                      f"| {sum(g['extra_flags'] for g in att):.0f} "
                      f"| {sum(g['flagged'] == 0 for g in clean)}/{len(clean)} "
                      f"| {sum(g['flagged'] for g in clean):.0f} "
                      f"| {min(g['misclassified'] for g in att)}–{max(g['misclassified'] for g in att)} "
                      f"|  ({time.monotonic() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
