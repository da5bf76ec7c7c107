"""The ``recipe.yaml`` the demo writes beside its run: a real recipe, to copy as a template."""

from __future__ import annotations

from pathlib import Path

import yaml

from influence_cli.demo.backdoor import Backdoor
from influence_cli.demo.data import Noise
from influence_cli.demo.models import FACTORIES, Arch
from influence_cli.files import atomic_write

RECIPE_FILE = "recipe.yaml"


def demo_recipe(arch: Arch) -> dict:
    """The recipe of a demo run folder: its model factory, checkpoints, data files; reports go to ``audit/``."""
    return {
        "model": {"factory": FACTORIES[arch]},
        "checkpoints": {"glob": "checkpoints/epoch*.pt", "learning_rate": "auto"},
        "data": {"train": {"format": "tensors", "path": "data/train.pt"},
                 "test": {"format": "tensors", "path": "data/test.pt"}},
        "loss": "cross_entropy",
        "batch_size": 256,
        "device": "cpu",
        "output": "audit",
    }


def write_recipe(out: Path, arch: Arch, *, noise: Noise, noise_rate: float, seed: int,
                 backdoor: Backdoor | None) -> Path:
    """Write ``out/recipe.yaml`` (:func:`demo_recipe`) under a comment saying what was planted; returns its path."""
    attack = (f"# plus a backdoor: {backdoor.n_poison} images of digit {backdoor.source} with a corner trigger "
              f"relabelled {backdoor.target}\n" if backdoor is not None else "")
    header = ("# Written by `influence-cli demo`: a digits CNN trained with SGD on labels of which\n"
              f"# {noise_rate:.0%} were flipped ({noise}, seed {seed}); copy it as a template.\n" + attack)
    return atomic_write(out / RECIPE_FILE, header + yaml.safe_dump(demo_recipe(arch), sort_keys=False))
