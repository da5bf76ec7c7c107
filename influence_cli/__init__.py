"""influence-cli: audit PyTorch training data with TracIn and renormalized influence.

Library API (the CLI is a thin shell over it)::

    from influence_cli import load_recipe, score
    result = score(load_recipe("recipe.yaml"), method="gas-l", test_indices=range(10), k=20)
"""

from influence_cli.errors import InfluenceError
from influence_cli.estimators import Method
from influence_cli.recipe import Recipe, load_recipe
from influence_cli.scoring import InfluenceResult, TestLabels, score
from influence_cli.session import Session

__version__ = "0.1.0"

__all__ = ["InfluenceError", "InfluenceResult", "Method", "Recipe", "Session", "TestLabels", "load_recipe",
           "score", "__version__"]
