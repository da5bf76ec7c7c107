"""The demo's models, importable from anywhere so that the recipe it writes works from any folder."""

from __future__ import annotations

from typing import Literal

from torch import nn

Arch = Literal["cnn", "mlp"]

#: The ``model.factory`` a written recipe names for each architecture (re-exported by the package).
FACTORIES: dict[str, str] = {"cnn": "influence_cli.demo:build_digits_cnn", "mlp": "influence_cli.demo:build_digits_mlp"}


def build_digits_cnn(num_classes: int = 10, channels: int = 16) -> nn.Module:
    """Conv(1→c,3)·ReLU·Conv(c→2c,3)·ReLU·AvgPool(2)·Linear(2c·16→classes) on 1×8×8 images."""
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
        nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(),
        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(2 * channels * 16, num_classes),
    )


def build_digits_mlp(num_classes: int = 10, hidden: int = 128) -> nn.Module:
    """Flatten·Linear(64→h)·ReLU·Linear(h→h)·ReLU·Linear(h→classes) on 1×8×8 images."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


def build_model(arch: Arch) -> nn.Module:
    """A freshly initialised demo model of architecture ``arch`` (default sizes)."""
    return build_digits_cnn() if arch == "cnn" else build_digits_mlp()
