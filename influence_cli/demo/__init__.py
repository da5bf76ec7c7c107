"""The built-in demo: a real digits run with planted label noise and a backdoor, audited like a user's recipe.

The modules, in the order the demo uses them:

- :mod:`~influence_cli.demo.data`: scikit-learn's bundled digits (1,797 8×8 images, no download),
  split with a fixed seed, a fraction of the training labels flipped (:func:`digits_data`);
- :mod:`~influence_cli.demo.backdoor`: a 3×3 checkerboard trigger stamped on a few dozen training
  images of a source class s, relabelled to a class t (:func:`plant_backdoor`), and the triggered
  test image of class s that is the attack's target;
- :mod:`~influence_cli.demo.models` and :mod:`~influence_cli.demo.training`: a small model trained
  with SGD, checkpoints saved *with their learning rates*;
- :mod:`~influence_cli.demo.recipe` and :mod:`~influence_cli.demo.build`: the run folder (data
  files, checkpoints, ``planted_noise.json``, ``recipe.yaml``: :func:`make_digits_run`);
- :mod:`~influence_cli.demo.run`: :func:`run_demo` audits that recipe through the public library
  calls (``mislabel_detect``, ``score``, ``target_identify``), writes every report and measures how
  many planted flips, and whether the target and its poison, were found (:class:`DemoResult`).

The models are exported here because the written recipe names ``influence_cli.demo:build_digits_cnn``
(it works from any folder).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from influence_cli.demo.backdoor import (
    TRIGGER,
    Backdoor,
    append_target,
    plant_backdoor,
    stamp_trigger,
)
from influence_cli.demo.build import make_digits_run
from influence_cli.demo.data import DIGIT_PAIRS, DigitsData, Noise, digits_data
from influence_cli.demo.models import (
    FACTORIES,
    Arch,
    build_digits_cnn,
    build_digits_mlp,
)
from influence_cli.demo.training import TrainSchedule, train_model

if TYPE_CHECKING:
    from influence_cli.demo.run import DemoResult, poison_count, recall_at, run_demo

#: Names of :mod:`influence_cli.demo.run`, imported on first use: it loads the audits and the report
#: writers (matplotlib), which a recipe naming ``influence_cli.demo:build_digits_cnn`` does not need.
_RUN = ("DemoResult", "poison_count", "recall_at", "run_demo")

__all__ = ["DIGIT_PAIRS", "FACTORIES", "TRIGGER", "Arch", "Backdoor", "DigitsData", "Noise", "TrainSchedule",
           "append_target", "build_digits_cnn", "build_digits_mlp", "digits_data", "make_digits_run",
           "plant_backdoor", "stamp_trigger", "train_model", "DemoResult", "poison_count", "recall_at", "run_demo"]


def __getattr__(name: str) -> Any:
    """Import :mod:`influence_cli.demo.run`'s public names on first use (PEP 562)."""
    if name not in _RUN:
        raise AttributeError(f"module 'influence_cli.demo' has no attribute {name!r}")
    from influence_cli.demo import run

    return getattr(run, name)
