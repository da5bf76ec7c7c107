"""Validation errors of a recipe as one line in the project's own words: the YAML path of the most
specific problem, then what was expected and what was given."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails


def _yaml_path(error: ErrorDetails, data: Any) -> list[str]:
    """The YAML path of a pydantic error as parts (``["checkpoints", "[0]", ".path"]``), dropping
    pydantic's union-branch tags (they are not keys of the user's data)."""
    loc = error["loc"]
    if error["type"] == "unknown_key":
        loc = (*loc, error["ctx"]["key"])
    elif error["type"].startswith("union_tag_"):  # the discriminating key (`format`) is missing or wrong
        loc = (*loc, error["ctx"]["discriminator"].strip("'"))
    parts: list[str] = []
    node = data
    for pos, item in enumerate(loc):
        if isinstance(node, list) and isinstance(item, int) and 0 <= item < len(node):
            parts.append(f"[{item}]")
            node = node[item]
        elif isinstance(node, dict) and item in node:
            parts.append(("." if parts else "") + str(item))
            node = node[item]
        elif pos == len(loc) - 1 and error["type"] in ("missing", "union_tag_not_found"):
            parts.append(("." if parts else "") + str(item))  # a missing key
    return parts


def _shown(value: Any) -> str:
    """A value the way the user wrote it in YAML, kept short."""
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


# pydantic's error types in the project's own words: "expected <what>, got <value>"
_EXPECTED = {"int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
             "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
             "string_type": "a string", "bool_type": "true or false", "bool_parsing": "true or false",
             "list_type": "a list", "dict_type": "a mapping of keys", "model_type": "a mapping of keys",
             "checkpoints_type": "a list of checkpoints or a mapping with `glob` or `hf_trainer_dir`"}
_BOUNDS = {"greater_than": ("greater than", "gt"), "greater_than_equal": ("greater than or equal to", "ge"),
           "less_than": ("less than", "lt"), "less_than_equal": ("less than or equal to", "le")}


def _message(error: ErrorDetails, literals: list[str]) -> str:
    """What is wrong, in the project's words for the common cases (pydantic's otherwise).
    ``literals``: the values another branch of a union would take at the same place (``'auto'``)."""
    kind, ctx, got = error["type"], error.get("ctx", {}), _shown(error["input"])
    if kind in _EXPECTED:
        return f"expected {' or '.join([_EXPECTED[kind], *literals])}, got {got}"
    if kind in _BOUNDS:
        words, bound = _BOUNDS[kind]
        return f"must be {words} {ctx[bound]:g}, got {got}"
    if kind in ("missing", "union_tag_not_found"):
        return "required key is missing"
    if kind in ("literal_error", "enum"):  # pydantic writes "'a', 'b' or 'c'"
        values = ctx["expected"].replace(" or ", ", ")
        return f"expected {'one of ' if ',' in values else ''}{values}, got {got}"
    if kind == "union_tag_invalid":
        key, tags = ctx["discriminator"].strip("'"), ctx["expected_tags"].replace("'", "")
        return f"unknown {key} {ctx['tag']!r} (expected one of: {tags})"
    return error["msg"].removeprefix("Value error, ")


def one_line(exc: ValidationError, data: Any, source: str) -> str:
    # The error at the deepest YAML path is the most specific; at equal depth an unknown key comes
    # first (it usually explains the others), then pydantic's order (the first union branch).
    errors = [(_yaml_path(e, data), e) for e in exc.errors()]
    path, error = max(errors, key=lambda pe: (len(pe[0]), pe[1]["type"] == "unknown_key"))
    literals = [e["ctx"]["expected"] for p, e in errors
                if p == path and e["type"] == "literal_error" and e is not error]
    return f"{source}: {''.join(path) or '<top level>'}: {_message(error, literals)}"
