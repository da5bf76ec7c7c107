"""Reading a recipe file: UTF-8, safe YAML that refuses a key given twice in one mapping (the last
one would silently win), absurdly deep nesting and self-containing aliases, and reads ``10:20`` as a
string (an index range, as YAML 1.2 does), not as base 60; every problem is one line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from influence_cli.errors import RecipeError

MAX_DEPTH = 100  # levels of nested lists and mappings; a recipe needs about 6


class _YAMLRefusal(yaml.YAMLError):
    """Well-formed YAML that a recipe may not be: ``text`` is the problem at 1-based ``line``."""

    def __init__(self, line: int, text: str) -> None:
        super().__init__(text)
        self.line, self.text = line, text


class _RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (at any level), nesting
    deeper than :data:`MAX_DEPTH` (which would exhaust Python's recursion while composing) and an
    alias inside the node it names (``&a [*a]``: a structure that contains itself)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._open: list[str | None] = []  # anchors of the nodes being composed, outermost first

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent) and event.anchor in self._open:
            raise _YAMLRefusal(line, f"alias *{event.anchor} is used inside &{event.anchor} itself (a list or "
                                     "mapping cannot contain itself)")
        if len(self._open) == MAX_DEPTH:
            raise _YAMLRefusal(line, f"nested too deeply (more than {MAX_DEPTH} levels of lists and mappings)")
        self._open.append(getattr(event, "anchor", None))
        try:
            return super().compose_node(parent, index)
        finally:
            self._open.pop()

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`; its keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                earlier = first.setdefault(key, key_node)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if earlier is not key_node:
                raise _YAMLRefusal(key_node.start_mark.line + 1, f"duplicate key {key!r} (first at line "
                                                                f"{earlier.start_mark.line + 1})")
        return super().construct_mapping(node, deep)


# YAML 1.1 reads `10:20` as the base-60 integer 620 (and `1:30.5` as a float); YAML 1.2 dropped that.
# A recipe reads such a scalar as the string it looks like (an index range, "10:20"): the int and
# float resolvers below are PyYAML's without their base-60 forms.
_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_RecipeLoader.add_implicit_resolver(_INT, re.compile(r"""^(?:[-+]?0b[0-1_]+
    |[-+]?0[0-7_]+
    |[-+]?(?:0|[1-9][0-9_]*)
    |[-+]?0x[0-9a-fA-F_]+)$""", re.VERBOSE), list("-+0123456789"))
_RecipeLoader.add_implicit_resolver(_FLOAT, re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
    |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.VERBOSE), list("-+0123456789."))


def read_yaml(path: Path) -> Any:
    """The parsed YAML of a recipe file; every problem is a one-line :class:`RecipeError`."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read the recipe: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
    try:
        return yaml.load(text, Loader=_RecipeLoader)  # a SafeLoader subclass: nothing is constructed but data
    except _YAMLRefusal as exc:
        raise RecipeError(f"{path}:{exc.line}: {exc.text}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{path}{where}: malformed YAML: {problem}") from None
