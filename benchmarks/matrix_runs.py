"""The training runs of the realistic benchmark matrix (:mod:`benchmarks.matrix`).

``vision``: a generated 32×32 RGB ``imagefolder`` (scikit-learn's 8×8 digits upscaled to 24×24,
coloured foreground on a coloured background, placed at a random offset, Gaussian pixel noise),
flipped labels written as files in the wrong class folder; torchvision ``resnet18`` or
``mobilenet_v3_small`` (num_classes=10) trained with SGD (momentum 0.9, weight decay 5e-4),
random crop (padding 4) + horizontal flip in training only, batch 64, η0 0.02 with cosine
annealing over 20 epochs (or StepLR, γ = 0.1 at 2/3 of the epochs: ``schedule="step"``), and a
checkpoint ``{model, optimizer, scheduler, epoch}`` every ``every`` (4) epochs saved after
``scheduler.step()`` (``learning_rate: auto`` reads the scheduler state). The architecture is
:attr:`VisionSchedule.arch`; the ``mobilenet_v3`` setting changes η0, epochs and ``every`` only
(``benchmarks.matrix.VISION_DEFAULTS``: η0 0.05 over 30 epochs, every 5). torchvision's MobileNetV3
BatchNorm has momentum 0.01, so its running statistics, and with them eval-mode predictions at the
early checkpoints, lag the weights.

``digits``: :mod:`influence_cli.demo`'s MLP/CNN on 8×8 digits, checkpoints at epochs
1, 2, 5, 10, 20, 30 (the set starts under-trained).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torchvision
import yaml
from torch import nn

from influence_cli.demo import TrainSchedule, make_digits_run, train_model
from influence_cli.demo.data import DIGIT_PAIRS

#: A fold trainer for cleanlab: (train x, train y, held-out x) → held-out probabilities.
FoldTrainer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
DIGIT_EPOCHS = (1, 2, 5, 10, 20, 30)
MEAN_STD = 0.5
DIGITS_TOTAL = 1797


@dataclass(frozen=True)
class Run:
    """A written run: its recipe, the flipped training indices (recipe order) and a fold trainer
    for the cleanlab baseline on (x, given labels)."""

    recipe: Path
    flipped: torch.Tensor
    x: torch.Tensor
    labels: torch.Tensor
    fold_trainer: FoldTrainer


def flip_labels(y: torch.Tensor, noise: str, rate: float, gen: torch.Generator) -> torch.Tensor:
    """``round(rate·N)`` labels flipped: ``uniform`` y → (y + s) mod 10, s ~ U{1..9}; ``pairs`` to
    the partner in DIGIT_PAIRS (the same kinds as :func:`influence_cli.demo.data.digits_data`)."""
    labels = y.clone()
    flip = torch.randperm(len(y), generator=gen)[: round(rate * len(y))]
    if noise == "uniform":
        labels[flip] = (y[flip] + torch.randint(1, 10, (len(flip),), generator=gen)) % 10
    else:
        partner = torch.arange(10)
        for a, b in DIGIT_PAIRS:
            partner[a], partner[b] = b, a
        labels[flip] = partner[y[flip]]
    return labels


def coloured_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n images [n, 32, 32, 3] uint8 and their digits: 8×8 digit → 24×24 (bilinear), colour
    c_fg·d + c_bg·(1 − d) with c_fg ~ U[0.55, 1]³, c_bg ~ U[0, 0.35]³, random offset, noise σ = 0.05."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(y))[:n]
    small = torch.as_tensor(x[pick], dtype=torch.float32).reshape(-1, 1, 8, 8) / 16
    big = nn.functional.interpolate(small, size=24, mode="bilinear", align_corners=False).clamp(0, 1)
    out = np.empty((n, 32, 32, 3), dtype=np.uint8)
    for i in range(n):
        fg, bg = rng.uniform(0.55, 1, 3), rng.uniform(0, 0.35, 3)
        canvas = np.tile(bg, (32, 32, 1))
        r, c = rng.integers(2, 7, 2)
        d = big[i, 0].numpy()[..., None]
        canvas[r:r + 24, c:c + 24] = fg * d + bg * (1 - d)
        out[i] = (np.clip(canvas + rng.normal(0, 0.05, canvas.shape), 0, 1) * 255).astype(np.uint8)
    return out, y[pick]


def write_folder(root: Path, images: np.ndarray, labels: torch.Tensor) -> None:
    """``root/<label>/<i:05d>.png``: the folder's sorted order is by label, then index."""
    from PIL import Image

    for i, (img, label) in enumerate(zip(images, labels.tolist())):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / str(label) / f"{i:05d}.png")


def folder_order(labels: torch.Tensor) -> torch.Tensor:
    """The indices of :func:`write_folder`'s files in ImageFolder order (class, then name)."""
    return torch.as_tensor(sorted(range(len(labels)), key=lambda i: (str(int(labels[i])), i)))


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop of the 4-padded image back to 32×32 and a horizontal flip with p = 0.5."""
    padded = nn.functional.pad(x, (4, 4, 4, 4))
    r, c = torch.randint(0, 9, (2,), generator=gen).tolist()
    out = padded[:, :, r:r + 32, c:c + 32]
    return out.flip(3) if torch.rand(1, generator=gen).item() < 0.5 else out


@dataclass(frozen=True)
class VisionSchedule:
    """SGD η0, momentum 0.9, weight decay 5e-4, batch ``batch``; ``schedule`` ``"cosine"``
    (CosineAnnealingLR, T_max = epochs, to 0) or ``"step"`` (StepLR γ = 0.1 after ⌊2·epochs/3⌋ epochs)."""

    arch: str = "resnet18"
    epochs: int = 20
    every: int = 4
    lr: float = 0.02
    batch: int = 64
    schedule: str = "cosine"


def train_vision(sched: VisionSchedule, x: torch.Tensor, y: torch.Tensor, seed: int,
                 ckpt_dir: Path | None = None) -> nn.Module:
    """Train ``torchvision.models.<arch>(num_classes=10)`` on normalised x ∈ [−1, 1]; with
    ``ckpt_dir``, save ``epoch<e>.pt`` every ``sched.every`` epochs after ``scheduler.step()``."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = getattr(torchvision.models, sched.arch)(num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=sched.lr, momentum=0.9, weight_decay=5e-4)
    if sched.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=sched.epochs)
    else:
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2 * sched.epochs // 3, gamma=0.1)
    for epoch in range(1, sched.epochs + 1):
        model.train()
        for batch in torch.randperm(len(y), generator=gen).split(sched.batch):
            if len(batch) < 2:
                continue
            opt.zero_grad()
            nn.functional.cross_entropy(model(augment(x[batch], gen)), y[batch]).backward()
            opt.step()
        scheduler.step()
        if ckpt_dir is not None and epoch % sched.every == 0:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": scheduler.state_dict(), "epoch": epoch}, ckpt_dir / f"epoch{epoch}.pt")
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities of ``model`` on x, in batches of 256."""
    return torch.cat([model(b).softmax(1) for b in x.split(256)]).double()


def vision_run(out: Path, sched: VisionSchedule, noise: str, rate: float, seed: int, n_train: int,
               n_test: int = 300) -> Run:
    """Write a vision run (PNG folders, checkpoints, recipe) into ``out``. scikit-learn has 1,797
    digits, each used once: the test split is min(n_test, 1797 − n_train) (297 at 1,500)."""
    n_test = min(n_test, DIGITS_TOTAL - n_train)
    if n_test < 50:
        raise ValueError(f"n_train {n_train} leaves {n_test} of the {DIGITS_TOTAL} digits for the test split")
    images, digits = coloured_digits(n_train + n_test, seed)
    clean = torch.as_tensor(digits[:n_train])
    given = flip_labels(clean, noise, rate, torch.Generator().manual_seed(seed + 7))
    write_folder(out / "train", images[:n_train], given)
    write_folder(out / "test", images[n_train:], torch.as_tensor(digits[n_train:]))
    order = folder_order(given)
    x = (torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255 - MEAN_STD) / MEAN_STD
    train_vision(sched, x[:n_train][order], given[order], seed, out / "checkpoints")
    norm = {"normalize": {"mean": [MEAN_STD] * 3, "std": [MEAN_STD] * 3}}
    spec = {"format": "imagefolder", "root": "train", "transform": ["to_tensor", norm]}
    recipe = {"model": {"torchvision": sched.arch, "kwargs": {"num_classes": 10}},
              "checkpoints": {"glob": "checkpoints/epoch*.pt", "learning_rate": "auto"},
              "data": {"train": spec, "test": {**spec, "root": "test"}}, "loss": "cross_entropy",
              "batch_size": 128, "device": "cpu", "output": "audit"}
    (out / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    flipped = (given[order] != clean[order]).nonzero().flatten()
    return Run(out / "recipe.yaml", flipped, x[:n_train][order], given[order], partial(vision_fold, sched, seed + 1))


def vision_fold(sched: VisionSchedule, seed: int, x: torch.Tensor, y: torch.Tensor, held: torch.Tensor) -> torch.Tensor:
    """A :data:`FoldTrainer`: the run's training recipe on (x, y), probabilities on ``held``."""
    return predict(train_vision(sched, x, y, seed), held)


def digits_fold(arch: str, schedule: TrainSchedule, seed: int, x: torch.Tensor, y: torch.Tensor,
                held: torch.Tensor) -> torch.Tensor:
    """A :data:`FoldTrainer` for the digits runs."""
    return predict(train_model(arch, x, y, seed=seed, schedule=schedule), held)


def digits_run(out: Path, arch: str, noise: str, rate: float, seed: int) -> Run:
    """The demo's digits run with checkpoints at :data:`DIGIT_EPOCHS` only."""
    schedule = TrainSchedule(every=1)
    recipe, data = make_digits_run(out, seed=seed, arch=arch, noise="pairs" if noise == "clean" else noise,
                                   noise_rate=rate, schedule=schedule)
    for path in (out / "checkpoints").glob("epoch*.pt"):
        if int(path.stem[5:]) not in DIGIT_EPOCHS:
            path.unlink()
    return Run(recipe, data.flipped, data.train_x, data.labels, partial(digits_fold, arch, schedule, seed + 1))
