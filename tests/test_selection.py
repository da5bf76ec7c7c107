"""Index specs: one parser for ``--test-indices`` and the recipe's index keys."""

from __future__ import annotations

import subprocess
import sys

import pytest

from influence_cli.errors import ParameterError
from influence_cli.selection import parse_indices


@pytest.mark.parametrize("spec, want", [("0,3,7", [0, 3, 7]), ("0:3", [0, 1, 2]), ("0:2, 5", [0, 1, 5]),
                                        (":2", [0, 1]), ("7,2", [7, 2]), ("3:3", []), (None, None)])
def test_parse_indices(spec, want):
    assert parse_indices(spec) == want


def test_parse_indices_names_the_parameter():
    with pytest.raises(ParameterError, match=r"^test_indices: cannot read 'x'; use '0,3,7', '0:100'") as exc:
        parse_indices("1,x")
    assert exc.value.parameter == "test_indices"
    with pytest.raises(ParameterError, match=r"^candidates: cannot read '1:'"):
        parse_indices("1:", "candidates")


def test_parsing_an_index_spec_loads_no_torch():
    """The recipe and ``--help`` parse index specs; neither may import PyTorch for it."""
    code = "import sys; from influence_cli.selection import parse_indices; parse_indices('0:3'); print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"
