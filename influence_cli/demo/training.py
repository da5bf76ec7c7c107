"""Training the demo's model with SGD, saving checkpoints with their learning rates."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from influence_cli.demo.models import Arch, build_model

#: ``on_checkpoint(epoch, model, learning_rate)``
OnCheckpoint = Callable[[int, nn.Module, float], None]


@dataclass(frozen=True)
class TrainSchedule:
    """SGD with momentum; a checkpoint every ``every`` epochs (η_c is the rate of the epochs it closes)."""

    epochs: int = 30
    every: int = 5
    lr: float = 0.05
    momentum: float = 0.9
    batch_size: int = 32
    decay_at: int = 20        # the learning rate is divided by 10 after this epoch

    @classmethod
    def for_epochs(cls, epochs: int) -> "TrainSchedule":
        """The default schedule stretched to ``epochs``: every = max(1, ⌊epochs/6⌋) (6 checkpoints),
        decay after ⌊2·epochs/3⌋."""
        return cls(epochs=epochs, every=max(1, epochs // 6), decay_at=2 * epochs // 3)

    def lr_at(self, epoch: int) -> float:
        """η of ``epoch`` (1-based): ``lr``, then ``lr``/10 after ``decay_at``."""
        return self.lr * (0.1 if epoch > self.decay_at else 1.0)


def train_model(arch: Arch, x: torch.Tensor, y: torch.Tensor, *, seed: int, schedule: TrainSchedule,
                on_checkpoint: OnCheckpoint | None = None) -> nn.Module:
    """Train ``arch`` on (x, y); call ``on_checkpoint(epoch, model, lr)`` every ``schedule.every`` epochs.
    Runs on one CPU thread (faster for a model this small than several threads contending)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(arch, x, y, seed=seed, schedule=schedule, on_checkpoint=on_checkpoint)
    finally:
        torch.set_num_threads(threads)


def _train(arch: Arch, x: torch.Tensor, y: torch.Tensor, *, seed: int, schedule: TrainSchedule,
           on_checkpoint: OnCheckpoint | None) -> nn.Module:
    """Seeded SGD over shuffled mini-batches of cross-entropy; returns the model in eval mode."""
    torch.manual_seed(seed)
    model = build_model(arch)
    opt = torch.optim.SGD(model.parameters(), lr=schedule.lr, momentum=schedule.momentum)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(1, schedule.epochs + 1):
        lr = schedule.lr_at(epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        for batch in torch.randperm(len(y), generator=gen).split(schedule.batch_size):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
        if on_checkpoint is not None and epoch % schedule.every == 0:
            on_checkpoint(epoch, model.eval(), lr)
    return model.eval()


def checkpoint_saver(folder: Path) -> OnCheckpoint:
    """An ``on_checkpoint`` that saves ``folder/epoch{N}.pt``: ``model_state_dict``, ``learning_rate``, ``epoch``."""
    folder.mkdir(parents=True, exist_ok=True)

    def save(epoch: int, model: nn.Module, lr: float) -> None:
        torch.save({"model_state_dict": model.state_dict(), "learning_rate": lr, "epoch": epoch},
                   folder / f"epoch{epoch}.pt")

    return save
