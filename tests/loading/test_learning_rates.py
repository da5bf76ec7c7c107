"""``learning_rate: auto``: η_c is the rate of the epochs that led to checkpoint c, read from a saved
scheduler state (closed forms of PyTorch's schedulers), checked against real training loops."""

from __future__ import annotations

import warnings
from typing import Any, Callable

import pytest
import torch
from torch.optim import lr_scheduler as sched

from influence_cli.loading.learning_rates import FILE, GUESSED, OPTIMIZER, SCHEDULER, learning_rate_in

SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer], Any]] = {
    "StepLR": lambda o: sched.StepLR(o, step_size=2, gamma=0.1),
    "MultiStepLR": lambda o: sched.MultiStepLR(o, milestones=[1, 3], gamma=0.5),
    "ExponentialLR": lambda o: sched.ExponentialLR(o, gamma=0.7),
    "CosineAnnealingLR": lambda o: sched.CosineAnnealingLR(o, T_max=5, eta_min=0.001),
    "LinearLR": lambda o: sched.LinearLR(o, start_factor=0.25, end_factor=1.0, total_iters=3),
    "ConstantLR": lambda o: sched.ConstantLR(o, factor=0.5, total_iters=2),
    "PolynomialLR": lambda o: sched.PolynomialLR(o, total_iters=5, power=2.0),
}


def _train(make: Callable[[torch.optim.Optimizer], Any], epochs: int = 5) -> list[tuple[float, dict, dict]]:
    """(rate used during epoch k, optimizer state, scheduler state) saved after ``scheduler.step()``."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)
    scheduler = make(opt)
    saved = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()": no real training here
        for _ in range(epochs):
            used = opt.param_groups[0]["lr"]
            scheduler.step()
            saved.append((used, opt.state_dict(), scheduler.state_dict()))
    return saved


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_a_saved_scheduler_gives_the_rate_of_the_epoch_trained(name: str) -> None:
    for used, opt, state in _train(SCHEDULERS[name]):
        assert learning_rate_in({"model": {}, "optimizer": opt, "scheduler": state}) == (pytest.approx(used), SCHEDULER)
        lightning = {"optimizer_states": [opt], "lr_schedulers": [state]}
        assert learning_rate_in(lightning) == (pytest.approx(used), SCHEDULER)


def test_an_explicit_rate_wins_and_an_optimizer_alone_is_a_guess_when_a_scheduler_was_attached() -> None:
    used, opt, state = _train(SCHEDULERS["StepLR"])[1]  # epoch 1 at 0.1; the optimizer already holds 0.01
    assert learning_rate_in({"learning_rate": 0.3, "optimizer": opt, "scheduler": state}) == (0.3, FILE)
    assert learning_rate_in({"optimizer": opt}) == (pytest.approx(0.01), GUESSED) and used == pytest.approx(0.1)
    plain = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.2).state_dict()
    assert learning_rate_in({"optimizer_state_dict": plain}) == (pytest.approx(0.2), OPTIMIZER)


@pytest.mark.parametrize("make", [lambda o: sched.LambdaLR(o, lambda e: 1 / (e + 1)),
                                  lambda o: sched.CyclicLR(o, 0.01, 0.1, step_size_up=2, mode="exp_range", gamma=0.9),
                                  lambda o: sched.CosineAnnealingWarmRestarts(o, T_0=2)])
def test_an_unknown_scheduler_state_falls_back_to_the_optimizer(make: Callable[[torch.optim.Optimizer], Any]) -> None:
    """No closed form (or a look-alike: CyclicLR has ``gamma`` too): the optimizer's rate, marked a guess."""
    _, opt, state = _train(make)[2]
    assert learning_rate_in({"optimizer": opt, "scheduler": state}) == (pytest.approx(opt["param_groups"][0]["lr"]),
                                                                       GUESSED)


def test_a_session_warns_once_for_guessed_rates_and_records_every_source(tmp_path) -> None:
    """Three checkpoints saved with only the optimizer state of a StepLR run: one warning, and run.json's
    checkpoint entries say where each η came from."""
    from influence_cli import Session, load_recipe
    from conftest import write_tiny_recipe

    run = write_tiny_recipe(tmp_path, "mlp", n_train=4, n_test=2, learning_rates=(0.5, 0.5, 0.5))
    for (_, opt, _), path in zip(_train(SCHEDULERS["StepLR"], epochs=3), run.ckpt_paths):
        torch.save({"model_state_dict": torch.load(path), "optimizer_state_dict": opt}, path)
    run.data["checkpoints"] = [{"path": p.name, "learning_rate": "auto"} for p in run.ckpt_paths]
    run.rewrite()
    with pytest.warns(UserWarning) as said:
        session = Session.from_recipe(load_recipe(run.recipe_path))
    ours = [w for w in said if "η read from the optimizer state" in str(w.message)]
    assert len(ours) == 1 and str(ours[0].message).startswith("3 of 3 checkpoints: ")
    assert [c.to_dict()["learning_rate_source"] for c in session.checkpoints] == [GUESSED] * 3
