"""influence-cli: audit PyTorch training data with TracIn and renormalized influence.

Library API (the CLI is a thin shell over it)::

    from influence_cli import load_recipe, score, write_reports
    result = score(load_recipe("recipe.yaml"), method="gas-l", test_indices=range(10), k=20)
    write_reports(result, "out/")
    result.to_pandas()  # every result: a DataFrame (pip install 'influence-cli[pandas]')

``progress=`` takes a :class:`NotebookProgress` (bars in Jupyter) or a callable ``(task, done, total)``
(see :mod:`influence_cli.progress`); ``docs/python-api.md`` has a complete example.

The names below are imported on first use, so ``import influence_cli`` (and the CLI's ``--help``)
does not load PyTorch until the library is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from influence_cli.version import __version__

#: public name → the module that defines it
_API = {
    "check": "influence_cli.audits.check", "CheckResult": "influence_cli.audits.check",
    "evaluate": "influence_cli.audits.lds", "LDSResult": "influence_cli.audits.lds",
    "mislabel_detect": "influence_cli.audits.mislabel", "MislabelResult": "influence_cli.audits.mislabel",
    "target_identify": "influence_cli.audits.target", "TargetResult": "influence_cli.audits.target",
    "score": "influence_cli.scoring", "InfluenceResult": "influence_cli.scoring",
    "InfluenceError": "influence_cli.errors",
    "NotebookProgress": "influence_cli.progress", "Progress": "influence_cli.progress",
    "Method": "influence_cli.methods", "MislabelMethod": "influence_cli.methods", "TestLabels": "influence_cli.methods",
    "Recipe": "influence_cli.recipe", "load_recipe": "influence_cli.recipe",
    "Session": "influence_cli.session",
    "write_reports": "influence_cli.reports.writer",
}

__all__ = ["CheckResult", "InfluenceError", "InfluenceResult", "LDSResult", "Method", "MislabelMethod",
           "MislabelResult", "NotebookProgress", "Progress", "Recipe", "Session", "TargetResult", "TestLabels", "check",
           "evaluate", "load_recipe", "mislabel_detect", "score", "target_identify", "write_reports", "__version__"]

if TYPE_CHECKING:
    from influence_cli.audits.check import CheckResult, check
    from influence_cli.audits.lds import LDSResult, evaluate
    from influence_cli.audits.mislabel import MislabelResult, mislabel_detect
    from influence_cli.audits.target import TargetResult, target_identify
    from influence_cli.errors import InfluenceError
    from influence_cli.methods import Method, MislabelMethod, TestLabels
    from influence_cli.progress import NotebookProgress, Progress
    from influence_cli.recipe import Recipe, load_recipe
    from influence_cli.reports.writer import write_reports
    from influence_cli.scoring import InfluenceResult, score
    from influence_cli.session import Session


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562)."""
    if name not in _API:
        raise AttributeError(f"module 'influence_cli' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
