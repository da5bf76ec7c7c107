"""influence-cli: audit PyTorch training data with TracIn and renormalized influence.

Library API (the CLI is a thin shell over it)::

    from influence_cli import load_recipe, score
    result = score(load_recipe("recipe.yaml"), method="gas-l", test_indices=range(10), k=20)
"""

from influence_cli.audits.check import CheckResult, check
from influence_cli.audits.mislabel import MislabelMethod, MislabelResult, mislabel_detect
from influence_cli.audits.target import TargetResult, target_identify
from influence_cli.errors import InfluenceError
from influence_cli.estimators import Method
from influence_cli.recipe import Recipe, load_recipe
from influence_cli.scoring import InfluenceResult, TestLabels, score
from influence_cli.session import Session

__version__ = "0.1.0"

__all__ = ["CheckResult", "InfluenceError", "InfluenceResult", "Method", "MislabelMethod", "MislabelResult", "Recipe", "Session", "TargetResult", "TestLabels",
           "check", "load_recipe", "mislabel_detect", "score", "target_identify", "__version__"]
