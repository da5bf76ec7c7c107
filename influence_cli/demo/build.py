"""A complete demo run folder: data files, checkpoints, what was planted, and the recipe."""

from __future__ import annotations

from pathlib import Path

import torch

from influence_cli.demo.backdoor import (
    TRIGGER_DESCRIPTION,
    Backdoor,
    append_target,
    plant_backdoor,
)
from influence_cli.demo.data import DigitsData, Noise, digits_data
from influence_cli.demo.models import Arch
from influence_cli.demo.recipe import write_recipe
from influence_cli.demo.training import TrainSchedule, checkpoint_saver, train_model
from influence_cli.files import write_json


def make_digits_run(out: Path, *, seed: int = 0, arch: Arch = "cnn", noise: Noise = "pairs",
                    noise_rate: float = 0.1, n_train: int = 1500, schedule: TrainSchedule = TrainSchedule(),
                    backdoor: Backdoor | None = None) -> tuple[Path, DigitsData]:
    """Write a complete audited run into ``out``: ``data/{train,test}.pt``, ``checkpoints/epochN.pt``
    (``model_state_dict`` + ``learning_rate``), ``planted_noise.json`` and ``recipe.yaml``.

    With a ``backdoor`` of at least one poison (:func:`~influence_cli.demo.backdoor.plant_backdoor`),
    the test split gets the attack's target at its end
    (:func:`~influence_cli.demo.backdoor.append_target`). Returns the recipe path and the data
    (with the planted flips)."""
    out = Path(out)
    backdoor = backdoor if backdoor is not None and backdoor.n_poison > 0 else None
    data = digits_data(seed=seed, noise=noise, noise_rate=noise_rate, n_train=n_train)
    if backdoor is not None:
        data = plant_backdoor(data, backdoor, seed=seed)
    (out / "data").mkdir(parents=True, exist_ok=True)
    torch.save({"inputs": data.train_x, "labels": data.labels}, out / "data" / "train.pt")
    model = train_model(arch, data.train_x, data.labels, seed=seed, schedule=schedule,
                        on_checkpoint=checkpoint_saver(out / "checkpoints"))
    if backdoor is not None:
        data = append_target(data, model, backdoor)
    torch.save({"inputs": data.test_x, "labels": data.test_y}, out / "data" / "test.pt")
    write_planted(out, data, noise=noise, noise_rate=noise_rate, seed=seed, backdoor=backdoor)
    return write_recipe(out, arch, noise=noise, noise_rate=noise_rate, seed=seed, backdoor=backdoor), data


def write_planted(out: Path, data: DigitsData, *, noise: Noise, noise_rate: float, seed: int,
                  backdoor: Backdoor | None) -> Path:
    """``out/planted_noise.json``: the noise settings, each flip (index, given and true label) and,
    under ``backdoor``, its classes, trigger, poison indices and the target's test index."""
    return write_json(out / "planted_noise.json", {
        "noise": noise, "rate": noise_rate, "seed": seed,
        "flipped": [{"train_index": int(i), "given_label": int(data.labels[i]),
                     "true_label": int(data.clean_labels[i])} for i in data.flipped],
        "backdoor": None if backdoor is None else {
            "source": backdoor.source, "target": backdoor.target, "trigger": TRIGGER_DESCRIPTION,
            "poison_train_indices": data.poison.tolist(), "target_test_index": len(data.test_y) - 1}})
