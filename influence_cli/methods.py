"""The choices a user makes by name (estimators, mislabel signals, test labels) and the defaults
of the audits' settings.

One home for each set of spellings and each default, shared by the recipe schema, the library and
the CLI (this module imports nothing heavy, so ``--help`` stays fast). :func:`choose` turns a
user's string into a member or a :class:`~influence_cli.errors.ParameterError` listing the choices.
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

from influence_cli.errors import ParameterError


class Choice(str, Enum):
    """A named choice; ``str()`` is its spelling."""

    def __str__(self) -> str:
        return self.value


class Method(Choice):
    """The influence estimator (see :mod:`influence_cli.estimators` for the formulas; ``ekfac``:
    :mod:`influence_cli.curvature.ekfac`)."""

    TRACIN = "tracin"
    GAS = "gas"
    GAS_L = "gas-l"
    EKFAC = "ekfac"
    ARNOLDI = "arnoldi"


#: Influence functions g′ᵀ(G + λI)⁻¹g at the final checkpoint (:mod:`influence_cli.curvature`).
CURVATURE_METHODS = (Method.EKFAC, Method.ARNOLDI)


class MislabelMethod(Choice):
    """How suspicious a training label is (see :mod:`influence_cli.audits.mislabel`)."""

    TRACIN = "tracin"
    TRACIN_LAST = "tracin-last"
    AUM = "aum"
    LOSS = "loss"
    COMBINED = "combined"
    EKFAC = "ekfac"
    ARNOLDI = "arnoldi"


class TestLabels(Choice):
    """Which label the test loss is taken at: the given one, or the final model's prediction
    ("why did the model predict this?")."""

    __test__ = False  # not a pytest class
    GIVEN = "given"
    PREDICTED = "predicted"


#: ``mislabel-detect``'s method (see :mod:`influence_cli.audits.mislabel` for why).
DEFAULT_MISLABEL_METHOD = MislabelMethod.COMBINED

# ``target-identify`` (see :mod:`influence_cli.audits.target` for how they were chosen):
#: k, the proponents kept per candidate (about the number of attack examples).
DEFAULT_TARGET_K = 40
#: Flag a candidate whose anomaly score exceeds this ...
DEFAULT_TARGET_THRESHOLD = 5.0
#: ... or exceeds this while owning more than DEFAULT_TARGET_MIN_SHARE of its top-k.
DEFAULT_TARGET_SHARE_THRESHOLD = 2.5
DEFAULT_TARGET_MIN_SHARE = 0.5

C = TypeVar("C", bound=Choice)


def choose(kind: type[C], value: C | str, parameter: str) -> C:
    """``value`` as a member of ``kind``; an unknown spelling is a :class:`ParameterError` on ``parameter``."""
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(m.value for m in kind)
        raise ParameterError(parameter, f"unknown choice {value!r} (choose from {choices})") from None
