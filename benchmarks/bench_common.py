"""Shared benchmark setup: the benchmark models, synthetic data, short training runs that save
checkpoints, and a recipe folder for influence-cli. Nothing downloads.

Models: ``build_mlp`` (100-256-256-10, 94k parameters, the reference setting of issue 5) and
``build_cnn`` (two Conv2d + BatchNorm blocks and a Linear head on 1×16×16 images).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
import yaml
from torch import nn

HERE = Path(__file__).resolve()


def build_mlp(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Linear(100, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, num_classes))


class BenchCNN(nn.Module):
    """conv1(1→8, 3×3) + BN + ReLU + pool → conv2(8→16) + BN + ReLU + pool → fc(256→10)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        h = nn.functional.max_pool2d(torch.relu(self.bn2(self.conv2(h))), 2)
        return self.fc(h.flatten(1))


def build_cnn(num_classes: int = 10) -> nn.Module:
    return BenchCNN(num_classes)


MODELS = {"mlp": build_mlp, "cnn": build_cnn}


def make_data(kind: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable 10-class Gaussian mixture: class means plus noise (flat 100-d or 1×16×16)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (100,) if kind == "mlp" else (1, 16, 16)
    means = torch.randn(10, *shape, generator=torch.Generator().manual_seed(1234))
    y = torch.randint(0, 10, (n,), generator=gen)
    return means[y] + 1.5 * torch.randn(n, *shape, generator=gen), y


def train_checkpoints(kind: str, x: torch.Tensor, y: torch.Tensor, folder: Path, *, checkpoints: int = 3,
                      lr: float = 0.05, batch_size: int = 64) -> tuple[list[Path], dict[str, float]]:
    """Train one epoch per checkpoint with SGD and save each; returns (paths, {"epoch": wall
    seconds per epoch, "epoch cpu": CPU seconds per epoch})."""
    torch.manual_seed(0)
    model = MODELS[kind]()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    paths, seconds = [], {"epoch": 0.0, "epoch cpu": 0.0}
    for c in range(checkpoints):
        model.train()
        r: dict[str, float] = {}
        with timed(r, "epoch"):
            for idx in torch.randperm(len(y)).split(batch_size):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
        for key in seconds:
            seconds[key] += r[key] / checkpoints
        path = folder / f"epoch{c + 1}.pt"
        torch.save(model.state_dict(), path)
        paths.append(path)
    return paths, seconds


def write_recipe(folder: Path, kind: str, ckpts: list[Path], lr: float, *, layers: list[str] | None = None,
                 batch_size: int = 500, name: str = "recipe.yaml", **extra: object) -> Path:
    """``name`` (a recipe) over ``train.pt``/``test.pt`` in ``folder`` and the given checkpoints."""
    data = {"model": {"factory": f"{HERE.parent / 'bench_common.py'}:build_{kind}"},
            "checkpoints": [{"path": str(p), "learning_rate": lr} for p in ckpts],
            "data": {"train": {"format": "tensors", "path": "train.pt"},
                     "test": {"format": "tensors", "path": "test.pt"}},
            "batch_size": batch_size, "device": "cpu", "layers": layers, **extra}
    path = folder / name
    path.write_text(yaml.safe_dump({k: v for k, v in data.items() if v is not None}, sort_keys=False))
    return path


def setup(folder: Path, kind: str, n_train: int, n_test: int, *, checkpoints: int = 3, lr: float = 0.05,
          **recipe: object) -> tuple[Path, list[Path], dict[str, float]]:
    """Data + trained checkpoints + recipe in ``folder``; returns (recipe, checkpoints, epoch times)."""
    folder.mkdir(parents=True, exist_ok=True)
    x, y = make_data(kind, n_train, seed=0)
    xt, yt = make_data(kind, n_test, seed=1)
    torch.save({"inputs": x, "labels": y}, folder / "train.pt")
    torch.save({"inputs": xt, "labels": yt}, folder / "test.pt")
    ckpts, epoch_s = train_checkpoints(kind, x, y, folder, checkpoints=checkpoints, lr=lr)
    return write_recipe(folder, kind, ckpts, lr, **recipe), ckpts, epoch_s


@contextmanager
def timed(results: dict[str, float], key: str) -> Iterator[None]:
    """Wall seconds under ``key`` and this process's CPU seconds under ``key + " cpu"`` (on a
    shared machine the CPU time is the steadier of the two)."""
    start, cpu = time.perf_counter(), time.process_time()
    yield
    results[key] = time.perf_counter() - start
    results[key + " cpu"] = time.process_time() - cpu
