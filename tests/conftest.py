"""Shared test fixtures: tiny recipe folders (data files + checkpoints in every format) and tolerances."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest
import torch
import yaml
from torch import nn

from fixtures.tiny_models import build_bert, build_cnn, build_linear, build_mlp

RTOL = 1e-6        # library vs brute-force float64 reference
ATOL = 1e-12
CAPTUM_RTOL = 1e-4  # library vs captum TracInCP

TINY_MODELS = Path(__file__).parent / "fixtures" / "tiny_models.py"
NUM_CLASSES = 3
SEQ_LEN = 6
VOCAB = 20

Inputs = torch.Tensor | dict[str, torch.Tensor]

FACTORIES: dict[str, Callable[[], nn.Module]] = {"mlp": build_mlp, "cnn": build_cnn, "bert": build_bert,
                                                   "linear": build_linear}

# Checkpoint formats; those marked True carry their own learning rate (the recipe says `auto`).
FORMATS: dict[str, bool] = {"plain": False, "training": True, "lr_key": True, "safetensors": False,
                            "module": False, "pickle": False}


@dataclass
class TinyRun:
    """A recipe folder written by :func:`write_tiny_recipe`, with everything the tests compare against."""

    dir: Path
    recipe_path: Path
    kind: str
    states: list[dict[str, torch.Tensor]]   # what each checkpoint holds (no prefix), in recipe order
    learning_rates: list[float]
    train: tuple[Inputs, torch.Tensor]
    test: tuple[Inputs, torch.Tensor]
    data: dict[str, Any] = field(default_factory=dict)  # the recipe as written

    @property
    def factory(self) -> Callable[[], nn.Module]:
        return FACTORIES[self.kind]

    @property
    def ckpt_paths(self) -> list[Path]:
        return [self.dir / c["path"] for c in self.data["checkpoints"]]

    def rewrite(self, **changes: Any) -> Path:
        """Rewrite the recipe with top-level keys changed (``None`` removes a key)."""
        self.data.update(changes)
        self.data = {k: v for k, v in self.data.items() if v is not None}
        self.recipe_path.write_text(yaml.safe_dump(self.data, sort_keys=False))
        return self.recipe_path


def make_inputs(kind: str, n: int, gen: torch.Generator) -> Inputs:
    """Random inputs for the tiny models; BERT gets padded sequences (mask 0 on the padding)."""
    if kind in ("mlp", "linear"):
        return torch.randn(n, 6, generator=gen)
    if kind == "cnn":
        return 2.0 * torch.randn(n, 1, 8, 8, generator=gen)
    lengths = torch.randint(2, SEQ_LEN + 1, (n,), generator=gen)
    lengths[0] = 2  # at least one example is surely padded
    mask = (torch.arange(SEQ_LEN)[None, :] < lengths[:, None]).long()
    ids = torch.randint(1, VOCAB, (n, SEQ_LEN), generator=gen) * mask
    return {"input_ids": ids, "attention_mask": mask}


def random_state(kind: str, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A checkpoint's weights: the model's initial state perturbed, with non-trivial BatchNorm
    running statistics (mean ≠ 0, var ≠ 1)."""
    with torch.random.fork_rng():  # deterministic initial weights, global RNG untouched
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
        state = FACTORIES[kind]().state_dict()
    out = {}
    for name, t in state.items():
        if not t.is_floating_point():
            out[name] = t.clone()
        elif name.endswith("running_var"):
            out[name] = 0.3 + 2.0 * torch.rand(t.shape, generator=gen)
        elif name.endswith("running_mean"):
            out[name] = 0.5 * torch.randn(t.shape, generator=gen)
        else:
            out[name] = t + 0.3 * torch.randn(t.shape, generator=gen)
    return out


def save_checkpoint(path: Path, state: dict[str, torch.Tensor], fmt: str, lr: float) -> Path:
    """Write ``state`` in one of :data:`FORMATS`; the file name's suffix follows the format."""
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = path.with_suffix(".safetensors")
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        return path
    if fmt == "plain":
        obj: Any = state
    elif fmt == "training":
        model = nn.Linear(1, 1)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        obj = {"model_state_dict": state, "optimizer_state_dict": opt.state_dict(), "epoch": 1}
    elif fmt == "lr_key":
        obj = {"state_dict": state, "learning_rate": lr}
    elif fmt == "module":
        obj = {"module." + k: v for k, v in state.items()}
    elif fmt == "pickle":
        obj = {"model_state_dict": state, "args": argparse.Namespace(lr=lr)}
    else:
        raise ValueError(fmt)
    torch.save(obj, path)
    return path


def write_tiny_recipe(folder: Path, kind: str = "mlp", *, n_train: int = 10, n_test: int = 4,
                      learning_rates: Sequence[float] = (0.5, 0.125), formats: Sequence[str] | None = None,
                      seed: int = 0, train: tuple[Inputs, torch.Tensor] | None = None,
                      test: tuple[Inputs, torch.Tensor] | None = None, **recipe: Any) -> TinyRun:
    """A recipe folder: ``train.pt``/``test.pt``, one checkpoint per learning rate and ``recipe.yaml``.

    ``formats`` gives each checkpoint's file format (default all ``plain``); extra keyword
    arguments become top-level recipe keys (``layers``, ``batch_size``, ``trust_checkpoints``...).
    """
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    formats = list(formats or ["plain"] * len(learning_rates))
    train = train or (make_inputs(kind, n_train, gen), torch.randint(0, NUM_CLASSES, (n_train,), generator=gen))
    test = test or (make_inputs(kind, n_test, gen), torch.randint(0, NUM_CLASSES, (n_test,), generator=gen))
    for split, (x, y) in (("train", train), ("test", test)):
        torch.save({"inputs": x, "labels": y}, folder / f"{split}.pt")
    states, entries = [], []
    for c, (lr, fmt) in enumerate(zip(learning_rates, formats)):
        state = random_state(kind, gen)
        path = save_checkpoint(folder / f"epoch{c + 1}.pt", state, fmt, lr)
        states.append(state)
        entries.append({"path": path.name, "learning_rate": "auto" if FORMATS[fmt] else float(lr)})
    data = {"model": {"factory": f"{TINY_MODELS}:build_{kind}"}, "checkpoints": entries,
            "data": {"train": {"format": "tensors", "path": "train.pt"},
                     "test": {"format": "tensors", "path": "test.pt"}},
            "loss": "cross_entropy", "batch_size": 4, "device": "cpu", "dtype": "float64", "output": "out"}
    data.update(recipe)
    run = TinyRun(folder, folder / "recipe.yaml", kind, states, [float(lr) for lr in learning_rates],
                  train, test, data)
    run.rewrite()
    return run


@pytest.fixture
def tiny_recipe(tmp_path: Path) -> Callable[..., TinyRun]:
    """``tiny_recipe(kind="mlp", **options)`` writes a fresh recipe folder under ``tmp_path``."""
    counter = iter(range(1_000))
    return lambda kind="mlp", **kw: write_tiny_recipe(tmp_path / f"{kind}{next(counter)}", kind, **kw)


@pytest.fixture(scope="module")
def one_thread() -> Any:
    """PyTorch on one CPU thread for a test module (restored after): on a shared machine more threads
    than free cores make small models many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


__all__ = ["ATOL", "CAPTUM_RTOL", "RTOL", "TinyRun", "make_inputs", "random_state", "save_checkpoint",
           "write_tiny_recipe"]
