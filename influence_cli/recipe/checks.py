"""The ``checks:`` section: the rules of ``influence-cli check`` and the test examples they watch."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field, NonNegativeInt, model_validator

from influence_cli.errors import ParameterError
from influence_cli.methods import Method, MislabelMethod
from influence_cli.recipe.section import Section
from influence_cli.selection import parse_indices


def _index_spec(value: Any) -> Any:
    """Test indices as written in a recipe: a list, one integer, or an index spec string
    ('0,3,7', '0:100', a mix), read by the same parser as ``--test-indices``."""
    if isinstance(value, str):
        try:
            value = parse_indices(value)
        except ParameterError as exc:
            raise ValueError(exc.detail) from None
    elif isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, list) and not value:
        raise ValueError("selects no test example")
    return value


TestIndices = Annotated[list[NonNegativeInt], BeforeValidator(_index_spec)]  # a list, one integer or a spec


class NoAttackTargetRule(Section):
    """``no_attack_target``: target identification flags none of the watched test examples.

    Indices are a list (``[0, 17, 42]``) or an index spec string, as for ``--test-indices``:
    ``"0,3,7"``, ``"0:100"`` (end exclusive) or a mix (``"0:10,15"``)."""

    test_indices: TestIndices | None = Field(
        None, description="watched test examples (e.g. the ones a release must get right), a list or an index spec "
                          "('0:50'); null = every candidate")
    candidates: TestIndices | None = Field(
        None, description="test examples the watched ones are compared with (target-identify's anomaly score is "
                          "relative to them; the watched ones are always included), a list or an index spec; "
                          "null = the whole test split")
    method: Method = Field(Method.GAS_L, description="target-identify estimator")


class ChecksSpec(Section):
    """Rules of ``influence-cli check``: each rule that is set must hold, unset rules are skipped.

    Counts are over flagged training examples that are not in the baseline (without a baseline,
    every flagged example counts). A key that is neither a rule nor a setting is an error.
    """

    baseline: str | None = Field(None, description="baseline JSON of accepted flagged examples, relative to the "
                                                   "recipe (`--baseline` overrides); until `--update-baseline` "
                                                   "first writes it, a missing file is an empty baseline (a warning)")
    mislabel_method: MislabelMethod | None = Field(None, description="mislabel-detect method; null = its default")
    max_flagged_mislabel_fraction: float | None = Field(
        None, ge=0, le=1, description="rule: flagged mislabels / N ≤ this")
    max_flagged_mislabel_per_class: NonNegativeInt | None = Field(
        None, description="rule: flagged mislabels with any one given label ≤ this")
    no_attack_target: NoAttackTargetRule | None = Field(
        None, description="rule: target-identify raises no flag on the watched test examples")
    max_new_flagged: NonNegativeInt | None = Field(
        None, description="rule: flagged mislabels that are not in the baseline ≤ this")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        """An unknown key is named with the list of rules (replaces :meth:`Section._known_keys`)."""
        unknown = sorted(set(data) - set(cls.model_fields), key=str) if isinstance(data, dict) else []
        if unknown:
            raise ValueError(f"unknown rule {unknown[0]!r}; known rules and settings: {', '.join(cls.model_fields)}")
        return data

    @model_validator(mode="after")
    def _some_rule(self) -> "ChecksSpec":
        if not any(getattr(self, k) is not None for k in self.rule_keys()):
            raise ValueError(f"give at least one rule: {', '.join(self.rule_keys())}")
        return self

    @classmethod
    def rule_keys(cls) -> list[str]:
        """The rule keys (every field that is not a setting)."""
        return [k for k in cls.model_fields if k not in ("baseline", "mislabel_method")]
