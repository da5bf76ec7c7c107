"""η_c from a checkpoint file (``learning_rate: auto``): the rate in effect for the training steps
that led to checkpoint c.

Where a rate is found, in order:

1. an explicit ``learning_rate`` / ``lr`` number in the file (what you saved is what you meant);
2. a saved scheduler state (``scheduler``, ``lr_scheduler``, ``scheduler_state_dict``, or
   Lightning's ``lr_schedulers[0]``) of a known closed-form PyTorch scheduler: StepLR,
   MultiStepLR, ExponentialLR, CosineAnnealingLR, LinearLR, ConstantLR, PolynomialLR. With
   ``last_epoch`` = e it gives η = f(e − 1), the rate of the last epoch (or step) trained, because
   the common loop saves after ``scheduler.step()`` (whose rate f(e) is the *next* epoch's);
3. the optimizer's current rate (``optimizer_state_dict``/``optimizer``/Lightning's
   ``optimizer_states[0]``, first parameter group). When a scheduler is evident (the group has
   ``initial_lr``, which PyTorch schedulers set) but its state was not saved, that rate may be the
   next epoch's: the source says so (:data:`GUESSED`) and the session warns once.

Each rate comes with its source (:class:`Rate`), which run.json records.

Hugging Face Trainer runs read the rate logged for each step instead (:mod:`.hf_trainer`).
"""

from __future__ import annotations

import bisect
import math
from typing import Any, Callable, Mapping, NamedTuple

OPTIMIZER_KEYS = ("optimizer_state_dict", "optimizer", "optimizer_states")
SCHEDULER_KEYS = ("scheduler", "lr_scheduler", "scheduler_state_dict", "lr_schedulers")

#: where a rate came from
FILE, SCHEDULER, OPTIMIZER = "file", "scheduler state", "optimizer state"
GUESSED = "optimizer state, scheduler attached but not saved"


class Rate(NamedTuple):
    """η_c and where it was read: ``recipe``, ``trainer_state.json``, or from the file :data:`FILE`,
    :data:`SCHEDULER`, :data:`OPTIMIZER`, :data:`GUESSED`."""

    value: float
    source: str


Schedule = Callable[[Mapping[str, Any], float, int], float]  # (state, base rate b, epoch e) → f(e)


def _multistep(s: Mapping[str, Any], b: float, e: int) -> float:
    milestones = sorted(int(m) for m in s["milestones"])  # a Counter {milestone: count} or a list
    return b * s["gamma"] ** bisect.bisect_right(milestones, e)


def _linear(s: Mapping[str, Any], b: float, e: int) -> float:
    progress = min(e, s["total_iters"]) / s["total_iters"]
    return b * (s["start_factor"] + (s["end_factor"] - s["start_factor"]) * progress)


#: closed forms f(e) of PyTorch's schedulers, recognised by exactly the hyper-parameter keys of their
#: state dicts (every key but :data:`COMMON` and private ones: CyclicLR also has ``gamma``, and is not ExponentialLR)
COMMON = frozenset({"base_lrs", "last_epoch", "verbose"})
SCHEDULES: list[tuple[frozenset[str], Schedule]] = [
    (frozenset({"step_size", "gamma"}), lambda s, b, e: b * s["gamma"] ** (e // s["step_size"])),
    (frozenset({"milestones", "gamma"}), _multistep),
    (frozenset({"T_max", "eta_min"}), lambda s, b, e: s["eta_min"] + (b - s["eta_min"])
     * (1 + math.cos(math.pi * e / s["T_max"])) / 2),
    (frozenset({"start_factor", "end_factor", "total_iters"}), _linear),
    (frozenset({"factor", "total_iters"}), lambda s, b, e: b * (s["factor"] if e < s["total_iters"] else 1.0)),
    (frozenset({"power", "total_iters"}), lambda s, b, e: b * (1 - min(e, s["total_iters"]) / s["total_iters"])
     ** s["power"]),
    (frozenset({"gamma"}), lambda s, b, e: b * s["gamma"] ** e),  # ExponentialLR
]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _first(value: Any) -> Any:
    """Lightning keeps lists of optimizer and scheduler states: the first one."""
    return value[0] if isinstance(value, list) and value else value


def _from_scheduler(state: Any) -> float | None:
    """f(last_epoch − 1) of a known scheduler state (see the module docstring), else ``None``."""
    if not isinstance(state, Mapping) or not _number(state.get("last_epoch")):
        return None
    bases = state.get("base_lrs")
    if not (isinstance(bases, list) and bases and _number(bases[0])):
        return None
    keys = {k for k in state if not str(k).startswith("_")} - COMMON
    for needed, schedule in SCHEDULES:
        if needed == keys:
            try:
                return float(schedule(state, float(bases[0]), max(int(state["last_epoch"]) - 1, 0)))
            except (TypeError, ValueError, ZeroDivisionError, KeyError):
                return None
    return None


def _optimizer_group(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for key in OPTIMIZER_KEYS:
        opt = _first(obj.get(key))
        groups = opt.get("param_groups") if isinstance(opt, Mapping) else None
        if isinstance(groups, list) and groups and isinstance(groups[0], Mapping) and _number(groups[0].get("lr")):
            return groups[0]
    return None


def learning_rate_in(obj: Mapping[str, Any]) -> Rate | None:
    """η of the checkpoint whose top-level mapping is ``obj`` (see the module docstring), or ``None``."""
    for key in ("learning_rate", "lr"):
        if _number(obj.get(key)):
            return Rate(float(obj[key]), FILE)
    for key in SCHEDULER_KEYS:
        rate = _from_scheduler(_first(obj.get(key)))
        if rate is not None:
            return Rate(rate, SCHEDULER)
    group = _optimizer_group(obj)
    if group is None:
        return None
    return Rate(float(group["lr"]), GUESSED if "initial_lr" in group else OPTIMIZER)
