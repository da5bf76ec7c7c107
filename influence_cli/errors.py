"""The one user-facing error type.

Library code raises :class:`InfluenceError` (or a subclass) with a one-line message that says
what is wrong and where (a recipe key, a file, an example index). Only the CLI turns it into a
message on stderr and an exit code; notebook users get an ordinary exception.
"""

from __future__ import annotations

import re


class InfluenceError(Exception):
    """A problem with the user's input: recipe, checkpoints, data, or options.

    ``exit_code`` follows the CLI convention: 0 clean, 1 findings, 2 usage or input error.
    """

    exit_code: int = 2

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ParameterError(InfluenceError):
    """A library function's argument is invalid. ``parameter`` is its Python name (``k``,
    ``test_indices``); the CLI shows the matching flag instead (``--top-k``, ``--test-indices``)."""

    def __init__(self, parameter: str, detail: str) -> None:
        super().__init__(f"{parameter}: {detail}")
        self.parameter, self.detail = parameter, detail


class RecipeError(InfluenceError):
    """The recipe is malformed, has unknown keys, or points at something that is not there."""


class CheckpointError(InfluenceError):
    """A checkpoint cannot be loaded, does not fit the model, or has no learning rate."""


class DataError(InfluenceError):
    """A data split is empty, has the wrong shape, or has labels the model cannot take."""


class GradientError(InfluenceError):
    """A gradient is not finite (NaN or infinite loss)."""


class DistributedError(InfluenceError):
    """A rank failed, died, hung past the timeout, or the process group could not be joined."""

    def __init__(self, message: str, exit_code: int = 3) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty), without
    a leading ``[file.cc:123]`` location that C++ backends such as gloo prepend."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(exc).strip())
    return text.splitlines()[0] if text else type(exc).__name__
