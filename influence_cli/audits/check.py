"""``check``: the recipe's ``checks:`` rules, evaluated once per data change (CI).

Each rule is a small class in :data:`RULES` (keyed by its recipe key) that declares what it
``needs`` (a mislabel pass, a target-identify pass). A run computes each need once, on one
session, then evaluates every rule on the same :class:`Facts`.

Let F be the training examples mislabel-detect flags (``checks.mislabel_method``, automatic cut),
B the baseline's ids and id(z) the stable content id of
:mod:`influence_cli.audits.baseline`. The *new* flags are F_new = {z ∈ F : id(z) ∉ B} (F_new = F
without a baseline); every mislabel rule counts F_new only, so accepted examples never fail a
build. Rules (a rule fails when its value exceeds its limit):

==================================  ==============================================  ===========
rule                                value                                           limit
==================================  ==============================================  ===========
``max_flagged_mislabel_fraction``   |F_new| / N                                     a fraction
``max_flagged_mislabel_per_class``  max_y |{z ∈ F_new : given label of z = y}|      a count
``max_new_flagged``                 |F_new|                                         a count
``no_attack_target``                target-identify flags among the watched tests   0
==================================  ==============================================  ===========

``no_attack_target`` ranks its ``candidates`` (default: the whole test split) with target-identify,
whose anomaly score is relative to the other candidates, and judges only the watched ones.

Baseline entries that are no longer flagged (fixed, removed, or below the cut) are reported as
*disappeared*; they never fail a rule.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

from influence_cli.audits.baseline import FROM_RECIPE, Baseline, accepted_baseline, baseline_file, example_ids
from influence_cli.errors import ParameterError, RecipeError
from influence_cli.frames import ToPandas
from influence_cli.loading.examples import DESCRIPTION_KEYS, label_text
from influence_cli.methods import MislabelMethod
from influence_cli.progress import Progress, ProgressLike, as_progress
from influence_cli.recipe import ChecksSpec, NoAttackTargetRule, Recipe
from influence_cli.session import Session

#: How many offenders a failing rule lists (the worst first).
WORST = 10


class Need(str, Enum):
    """An expensive pass a rule needs; each is run at most once per check."""

    MISLABEL = "mislabel"
    TARGET = "target"


@dataclass(frozen=True)
class Facts:
    """What the rules look at, as the stable dict layouts of the audits they come from.

    ``mislabels``: ``MislabelResult.to_dict()`` (ranking over all N, best suspects first);
    ``targets``: ``TargetResult.to_dict()``; ``ids``: the stable id of every flagged training example.
    """

    n_train: int
    mislabels: dict[str, Any] | None = None
    targets: dict[str, Any] | None = None
    ids: dict[int, str] = field(default_factory=dict)

    def flagged(self) -> list[dict[str, Any]]:
        """Flagged ranking entries, best suspects first, each with its ``id``."""
        if self.mislabels is None:
            return []
        return [{**e, "id": self.ids[e["train_index"]]} for e in self.mislabels["ranking"] if e["flagged"]]


@dataclass(frozen=True)
class Evidence:
    """Facts seen through a baseline: F (``flagged``) and F_new (``new``), both best first."""

    n_train: int
    flagged: list[dict[str, Any]]
    new: list[dict[str, Any]]
    targets: list[dict[str, Any]] | None


@dataclass(frozen=True)
class Outcome:
    """One rule's verdict: ``value`` against ``limit``, a one-line ``detail`` and the worst offenders."""

    rule: str
    passed: bool
    value: float
    limit: float
    detail: str
    offenders: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "passed": self.passed, "value": self.value, "limit": self.limit,
                "detail": self.detail, "offenders": self.offenders}


RULES: dict[str, type["Rule"]] = {}


class Rule(ABC):
    """A check rule. Subclasses set ``key`` (the recipe key) and ``needs``, and register themselves."""

    key: ClassVar[str]
    needs: ClassVar[frozenset[Need]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "key" in cls.__dict__:  # a concrete rule, not a shared base
            RULES[cls.key] = cls

    @abstractmethod
    def evaluate(self, ev: Evidence) -> Outcome:
        """The verdict on ``ev``."""


#: What check reports keep of a flagged training / test example (names, texts, paths: when known).
_MISLABEL_KEYS = ("train_index", "id", "given_label", "given_label_name", "suggested_label", "suggested_label_name",
                  "suggested_prob", "score", *DESCRIPTION_KEYS)
_TARGET_KEYS = ("test_index", "anomaly_score", "label", "label_name", "prediction", "prediction_name",
                *DESCRIPTION_KEYS)


def _mislabel_offender(e: dict[str, Any]) -> dict[str, Any]:
    return {k: e[k] for k in _MISLABEL_KEYS if k in e}


def _accepted_note(ev: Evidence) -> str:
    accepted = len(ev.flagged) - len(ev.new)
    return f" ({accepted} more accepted by the baseline)" if accepted else ""


class _NewFlagCount(Rule):
    """A number measured on F_new against ``limit``; a failure lists F_new's worst suspects."""

    needs: ClassVar[frozenset[Need]] = frozenset({Need.MISLABEL})
    limit: float

    @abstractmethod
    def measure(self, ev: Evidence) -> float:
        """The rule's value."""

    @abstractmethod
    def describe(self, ev: Evidence, value: float, compare: str) -> str:
        """The one-line detail; ``compare`` is ≤ or >."""

    def evaluate(self, ev: Evidence) -> Outcome:
        value = self.measure(ev)
        passed = value <= self.limit
        detail = self.describe(ev, value, "≤" if passed else ">") + _accepted_note(ev)
        return Outcome(self.key, passed, value, self.limit, detail,
                       [] if passed else [_mislabel_offender(e) for e in ev.new[:WORST]])


@dataclass(frozen=True)
class MaxFlaggedMislabelFraction(_NewFlagCount):
    """|F_new| / N ≤ ``limit``."""

    key: ClassVar[str] = "max_flagged_mislabel_fraction"
    limit: float

    def measure(self, ev: Evidence) -> float:
        return len(ev.new) / ev.n_train

    def describe(self, ev: Evidence, value: float, compare: str) -> str:
        return f"{len(ev.new)} of {ev.n_train} training examples flagged ({value:.2%}) {compare} {self.limit:.2%}"


@dataclass(frozen=True)
class MaxNewFlagged(_NewFlagCount):
    """|F_new| ≤ ``limit``: flagged examples whose id is not in the baseline."""

    key: ClassVar[str] = "max_new_flagged"
    limit: int

    def measure(self, ev: Evidence) -> float:
        return len(ev.new)

    def describe(self, ev: Evidence, value: float, compare: str) -> str:
        return f"{len(ev.new)} flagged example(s) not in the baseline {compare} {self.limit}"


@dataclass(frozen=True)
class MaxFlaggedMislabelPerClass(Rule):
    """max over given labels y of |{z ∈ F_new : y(z) = y}| ≤ ``limit``."""

    key: ClassVar[str] = "max_flagged_mislabel_per_class"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.MISLABEL})
    limit: int

    def evaluate(self, ev: Evidence) -> Outcome:
        counts = Counter(str(label_text(e, "given_label")) for e in ev.new)  # "cat (3)" when the class has a name
        over = sorted((c, y) for y, c in counts.items() if c > self.limit)[::-1]
        value = max(counts.values(), default=0)
        if over:
            detail = "; ".join(f"label {y}: {c} flagged > {self.limit}" for c, y in over)
        else:
            detail = f"at most {value} flagged with any one label ≤ {self.limit}"
        bad = {y for _, y in over}
        offenders = [_mislabel_offender(e) for e in ev.new if str(label_text(e, "given_label")) in bad][:WORST]
        return Outcome(self.key, not over, value, self.limit, detail + _accepted_note(ev), offenders)


@dataclass(frozen=True)
class NoAttackTarget(Rule):
    """No watched test example is flagged as an attack target by target-identify."""

    key: ClassVar[str] = "no_attack_target"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.TARGET})
    spec: NoAttackTargetRule

    def evaluate(self, ev: Evidence) -> Outcome:
        assert ev.targets is not None, "the target pass runs whenever this rule is set"
        watched = None if self.spec.test_indices is None else set(self.spec.test_indices)
        tests = [t for t in ev.targets if watched is None or t["test_index"] in watched]
        flagged = sorted((t for t in tests if t["flagged"]), key=lambda t: -t["anomaly_score"])
        if flagged:
            detail = (f"{len(flagged)} of {len(tests)} watched test example(s) flagged as attack targets: "
                      + ", ".join(f"test {t['test_index']} (anomaly {t['anomaly_score']:.3g}, "
                                  f"{len(t['suspects'])} suspects)" for t in flagged[:WORST]))
        else:
            detail = f"none of {len(tests)} watched test example(s) flagged ({self.spec.method})"
        offenders = [{**{k: t[k] for k in _TARGET_KEYS if k in t}, "suspects": t["suspects"][:WORST]}
                     for t in flagged[:WORST]]
        return Outcome(self.key, not flagged, len(flagged), 0, detail, offenders)


def rules_of(spec: ChecksSpec) -> list[Rule]:
    """The rules a ``checks:`` section sets, in the section's field order."""
    rules: list[Rule] = []
    for key in spec.rule_keys():
        value = getattr(spec, key)
        if value is not None:
            rules.append(RULES[key](value))  # type: ignore[call-arg]
    return rules


def gather(session: Session, rules: list[Rule], *, mislabel_method: MislabelMethod | None = None, need_mislabel: bool = False,
           progress: Progress | None = None) -> Facts:
    """Run each pass the ``rules`` need, once (``need_mislabel`` forces the mislabel pass, e.g. to
    update a baseline), and the stable ids of the flagged training examples."""
    needs = frozenset().union(*(r.needs for r in rules))
    mislabels = targets = None
    ids: dict[int, str] = {}
    if need_mislabel or Need.MISLABEL in needs:
        from influence_cli.audits.mislabel import mislabel_detect

        kwargs = {} if mislabel_method is None else {"method": mislabel_method}
        mislabels = mislabel_detect(session, progress=progress, **kwargs).to_dict()
        flagged = [e["train_index"] for e in mislabels["ranking"] if e["flagged"]]
        ids = example_ids(session.train, flagged)
    target_rules = [r for r in rules if isinstance(r, NoAttackTarget)]
    if target_rules:
        from influence_cli.audits.target import target_identify

        spec = target_rules[0].spec
        targets = target_identify(session, method=spec.method, test_indices=watched_candidates(session, spec),
                                  progress=progress).to_dict()
    return Facts(len(session.train), mislabels, targets, ids)


def watched_candidates(session: Session, spec: NoAttackTargetRule) -> list[int] | None:
    """The candidates target-identify ranks: ``candidates`` ∪ ``test_indices`` (None = the whole
    test split), after checking every index lies in the test split."""
    n = len(session.test) if session.test is not None else 0
    for key in ("test_indices", "candidates"):
        bad = [i for i in getattr(spec, key) or () if i >= n]
        if bad:
            raise RecipeError(f"{session.recipe.source}: checks.no_attack_target.{key}: index {bad[0]} is out of "
                              f"range for {n} test examples")
    if spec.candidates is None:
        return None
    chosen = sorted(set(spec.candidates) | set(spec.test_indices or ()))
    if len(chosen) < 3:
        raise RecipeError(f"{session.recipe.source}: checks.no_attack_target.candidates: target-identify compares "
                          f"candidates; give at least 3 distinct test examples (got {len(chosen)})")
    return chosen


@dataclass(frozen=True)
class CheckResult(ToPandas, records="rules"):
    """Every rule's outcome, and the baseline comparison behind them."""

    recipe: dict[str, Any]
    facts: Facts
    rules: list[Rule]
    baseline: Baseline | None
    outcomes: list[Outcome]
    new: list[dict[str, Any]]
    disappeared: list[dict[str, Any]]
    session: Session | None = field(default=None, compare=False, repr=False)  # what the facts were gathered on

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outcomes)

    @property
    def accepted(self) -> int:
        """Flagged examples the baseline accepts, |F| − |F_new|."""
        return len(self.facts.flagged()) - len(self.new)

    def with_baseline(self, baseline: Baseline | None) -> "CheckResult":
        """The same facts judged against another baseline (no pass is rerun)."""
        return evaluate(self.recipe, self.facts, self.rules, baseline, self.session)

    def to_dict(self) -> dict[str, Any]:
        """The stable layout of ``check.json``."""
        flagged = self.facts.flagged()
        return {
            "passed": self.passed,
            "recipe": self.recipe,
            "mislabel_method": None if self.facts.mislabels is None else self.facts.mislabels["method"],
            "target_method": None if self.facts.targets is None else self.facts.targets["method"],
            "n_train": self.facts.n_train,
            "rules": [o.to_dict() for o in self.outcomes],
            "flagged": len(flagged),
            "baseline": None if self.baseline is None else {
                "entries": len(self.baseline.entries), "accepted": self.accepted,
                "disappeared": self.disappeared},
            "new_flagged": [_mislabel_offender(e) for e in self.new],
        }


def evaluate(recipe: dict[str, Any], facts: Facts, rules: list[Rule], baseline: Baseline | None,
             session: Session | None = None) -> CheckResult:
    """Judge ``facts`` by every rule against ``baseline`` (pure: no model, no data)."""
    flagged = facts.flagged()
    known = baseline.ids if baseline is not None else frozenset()
    new = [e for e in flagged if e["id"] not in known]
    current = {e["id"] for e in flagged}
    disappeared = [] if baseline is None or facts.mislabels is None else [
        e for k, e in sorted(baseline.entries.items()) if k not in current]
    targets = None if facts.targets is None else facts.targets["test"]
    ev = Evidence(facts.n_train, flagged, new, targets)
    return CheckResult(recipe, facts, rules, baseline, [r.evaluate(ev) for r in rules], new, disappeared, session)


def check(recipe_or_session: Recipe | Session, *, baseline: Path | str | Baseline | None = FROM_RECIPE,
          update_baseline: bool = False, progress: ProgressLike | None = None) -> CheckResult:
    """Evaluate the recipe's ``checks:`` rules (one session, each pass once) against a baseline.

    ``baseline``: the accepted flagged examples B — the recipe's ``checks.baseline`` file by default,
    or a path, a :class:`Baseline`, or ``None`` for none. A ``checks.baseline`` file that does not exist
    yet is an empty B, with one warning (the first run of a CI job whose recipe names the file to
    create); a missing file given as a path is an error. ``update_baseline``: B := everything flagged
    now, written to the baseline file (which must then be a path), and the rules judged against it.
    This is exactly what ``influence-cli check [--baseline FILE] [--update-baseline]`` does.
    """
    recipe = recipe_or_session.recipe if isinstance(recipe_or_session, Session) else recipe_or_session
    spec, progress = checks_of(recipe), as_progress(progress)
    rules = rules_of(spec)
    path = None if isinstance(baseline, Baseline) else baseline_file(recipe, baseline)
    if update_baseline and path is None:
        raise ParameterError("update_baseline", "needs a baseline file: give `baseline` or set checks.baseline "
                             "in the recipe")
    accepted = baseline if isinstance(baseline, Baseline) else (
        accepted_baseline(path, from_recipe=baseline == FROM_RECIPE) if path is not None and not update_baseline
        else None)
    session = Session.of(recipe_or_session, need_test=any(Need.TARGET in r.needs for r in rules))
    facts = gather(session, rules, mislabel_method=spec.mislabel_method, need_mislabel=update_baseline,
                   progress=progress)
    result = evaluate(recipe.to_dict(), facts, rules, accepted, session)
    if update_baseline:
        assert path is not None
        result = result.with_baseline(updated_baseline(result))
        result.baseline.save(path)  # type: ignore[union-attr]
    return result


def checks_of(recipe: Recipe) -> ChecksSpec:
    """The recipe's ``checks:`` section (validated with the recipe); its absence is a recipe error."""
    spec = recipe.checks
    if spec is None:
        raise RecipeError(f"{recipe.source}: checks: the recipe has no `checks:` section; add rules such as "
                          "`max_flagged_mislabel_fraction: 0.01`")
    return spec


def updated_baseline(result: CheckResult) -> Baseline:
    """A baseline accepting everything flagged now (what ``--update-baseline`` writes)."""
    method = None if result.facts.mislabels is None else result.facts.mislabels["method"]
    base_dir = None if result.session is None else Path(result.session.recipe.base_dir).resolve()
    return Baseline.of(result.facts.flagged(), method, base_dir)

