"""Check rules and their reports, on hand-made mislabel / target-identify dicts (no model)."""

from __future__ import annotations

import json
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import torch

from influence_cli.audits.baseline import Baseline, example_ids
from influence_cli.audits.check import RULES, CheckResult, Facts, Need, evaluate, gather, rules_of, updated_baseline
from influence_cli.errors import RecipeError
from influence_cli.loading.examples import TensorExamples
from influence_cli.methods import MislabelMethod
from influence_cli.recipe import ChecksSpec, parse_recipe
from influence_cli.reports.check import append_step_summary, junit_xml, markdown, write_check_reports

N = 100


def _mislabels(flags: dict[int, int]) -> dict[str, Any]:
    """A mislabel-detect dict over N examples: ``flags`` maps flagged train_index → given label,
    listed first (best suspects), then unflagged examples."""
    rest = [i for i in range(N) if i not in flags]
    ranking = [{"rank": r + 1, "train_index": i, "score": float(N - r), "given_label": flags.get(i, i % 3),
                "suggested_label": (flags.get(i, i % 3) + 1) % 3, "suggested_prob": 0.9, "flagged": i in flags}
               for r, i in enumerate([*flags, *rest])]
    return {"method": "combined", "recipe": {}, "ranking": ranking}


def _targets(flagged: set[int], tests: range = range(5)) -> dict[str, Any]:
    rows = [{"test_index": t, "anomaly_score": 10.0 - t, "rank": r + 1, "flagged": t in flagged, "prediction": 1,
             "suspects": [{"train_index": 40 + t, "score": 2.0, "label": 1}]} for r, t in enumerate(tests)]
    return {"method": "gas-l", "recipe": {}, "test": rows}


def _facts(flags: dict[int, int], targets: dict[str, Any] | None = None) -> Facts:
    return Facts(N, _mislabels(flags), targets, {i: f"id{i:04d}" for i in flags})


def _run(checks: dict[str, Any], facts: Facts, baseline: Baseline | None = None) -> CheckResult:
    return evaluate({}, facts, rules_of(ChecksSpec.model_validate(checks)), baseline)


def _outcome(result: CheckResult, rule: str) -> Any:
    return next(o for o in result.outcomes if o.rule == rule)


def test_registry_covers_every_rule_key() -> None:
    assert set(RULES) == set(ChecksSpec.rule_keys())
    assert RULES["no_attack_target"].needs == {Need.TARGET}
    assert all(RULES[k].needs == {Need.MISLABEL} for k in RULES if k != "no_attack_target")


def test_fraction_rule_counts_flagged_over_n() -> None:
    facts = _facts({5: 0, 7: 1, 9: 1})
    ok = _outcome(_run({"max_flagged_mislabel_fraction": 0.03}, facts), "max_flagged_mislabel_fraction")
    assert ok.passed and ok.value == pytest.approx(0.03) and ok.offenders == []
    bad = _outcome(_run({"max_flagged_mislabel_fraction": 0.02}, facts), "max_flagged_mislabel_fraction")
    assert not bad.passed and "3 of 100" in bad.detail and "(3.00%) > 2.00%" in bad.detail
    assert [o["train_index"] for o in bad.offenders] == [5, 7, 9]  # best suspects first
    assert bad.offenders[0] == {"train_index": 5, "id": "id0005", "given_label": 0, "suggested_label": 1,
                                "suggested_prob": 0.9, "score": 100.0}


def test_per_class_rule_names_the_classes_over_the_limit() -> None:
    facts = _facts({1: 2, 2: 2, 3: 2, 4: 0, 5: 1, 6: 1})
    out = _outcome(_run({"max_flagged_mislabel_per_class": 1}, facts), "max_flagged_mislabel_per_class")
    assert not out.passed and out.value == 3
    assert out.detail.startswith("label 2: 3 flagged > 1; label 1: 2 flagged > 1")
    assert [o["train_index"] for o in out.offenders] == [1, 2, 3, 5, 6]
    assert _outcome(_run({"max_flagged_mislabel_per_class": 3}, facts), "max_flagged_mislabel_per_class").passed


def test_baseline_accepts_known_flags_and_reports_disappeared() -> None:
    facts = _facts({5: 0, 7: 1, 9: 1})
    baseline = Baseline.of([{"id": "id0005", "given_label": 0}, {"id": "id0009", "given_label": 1},
                            {"id": "gone", "given_label": 2}])
    result = _run({"max_new_flagged": 0, "max_flagged_mislabel_fraction": 0.01}, facts, baseline)
    assert [e["train_index"] for e in result.new] == [7]
    assert [e["id"] for e in result.disappeared] == ["gone"]
    new = _outcome(result, "max_new_flagged")
    assert not new.passed and new.value == 1 and [o["id"] for o in new.offenders] == ["id0007"]
    assert "(2 more accepted by the baseline)" in new.detail
    assert _outcome(result, "max_flagged_mislabel_fraction").value == pytest.approx(0.01)
    assert _outcome(result, "max_flagged_mislabel_fraction").passed
    # Without a baseline every flag is new; after accepting them all, nothing is.
    assert _outcome(result.with_baseline(None), "max_new_flagged").value == 3
    accepted = result.with_baseline(updated_baseline(result))
    assert accepted.passed and accepted.new == [] and accepted.disappeared == []
    assert accepted.to_dict()["baseline"] == {"entries": 3, "accepted": 3, "disappeared": []}


class _Result:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def to_dict(self) -> dict[str, Any]:
        return self.data


def _fake_session() -> Any:
    gen = torch.Generator().manual_seed(0)
    train = TensorExamples(torch.randn(N, 4, generator=gen), torch.randint(0, 3, (N,), generator=gen))
    test = TensorExamples(torch.randn(8, 4, generator=gen), torch.randint(0, 3, (8,), generator=gen))
    return types.SimpleNamespace(train=train, test=test, recipe=types.SimpleNamespace(source="r.yaml"))


@pytest.mark.parametrize("checks, passes, candidates", [
    ({"max_flagged_mislabel_fraction": 0.1, "max_new_flagged": 0, "max_flagged_mislabel_per_class": 1},
     ["mislabel"], None),
    ({"no_attack_target": {"test_indices": [2, 4], "method": "gas"}}, ["target"], None),
    ({"no_attack_target": {"test_indices": [7, 2], "candidates": [0, 1, 2, 3]}}, ["target"], [0, 1, 2, 3, 7]),
    ({"max_new_flagged": 0, "no_attack_target": {}}, ["mislabel", "target"], None),
])
def test_gather_runs_each_needed_pass_once(monkeypatch: pytest.MonkeyPatch, checks: dict[str, Any],
                                           passes: list[str], candidates: list[int] | None) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    session = _fake_session()
    train = session.train

    def mislabel_detect(s: Any, **kw: Any) -> _Result:
        assert s is session
        calls.append(("mislabel", kw))
        return _Result(_mislabels({3: 0, 8: 2}))

    def target_identify(s: Any, **kw: Any) -> _Result:
        assert s is session
        calls.append(("target", kw))
        return _Result(_targets(set()))

    monkeypatch.setattr("influence_cli.audits.mislabel.mislabel_detect", mislabel_detect)
    monkeypatch.setitem(sys.modules, "influence_cli.audits.target",
                        types.SimpleNamespace(target_identify=target_identify))
    facts = gather(session, rules_of(ChecksSpec.model_validate(checks)), mislabel_method=MislabelMethod.LOSS)
    assert [c[0] for c in calls] == passes
    if "mislabel" in passes:
        assert calls[0][1]["method"] == "loss" and facts.ids == example_ids(train, [3, 8])
    if "target" in passes:
        spec = checks["no_attack_target"]
        assert calls[-1][1]["method"] == spec.get("method", "gas-l")
        assert calls[-1][1]["test_indices"] == candidates  # None: the whole test split
    assert (facts.mislabels is None) == ("mislabel" not in passes)
    assert (facts.targets is None) == ("target" not in passes)


@pytest.mark.parametrize("key", ["test_indices", "candidates"])
def test_watched_indices_out_of_range_name_the_recipe_key(key: str) -> None:
    rules = rules_of(ChecksSpec.model_validate({"no_attack_target": {key: [1, 8]}}))
    with pytest.raises(RecipeError) as err:
        gather(_fake_session(), rules)
    assert err.value.message == (f"r.yaml: checks.no_attack_target.{key}: index 8 is out of range "
                                 "for 8 test examples")


def test_no_attack_target_looks_at_watched_tests_only() -> None:
    facts = _facts({}, _targets({1, 3}))
    out = _outcome(_run({"no_attack_target": {"test_indices": [0, 1, 2]}}, facts), "no_attack_target")
    assert not out.passed and out.value == 1 and out.limit == 0
    assert out.offenders == [{"test_index": 1, "anomaly_score": 9.0, "prediction": 1,
                              "suspects": [{"train_index": 41, "score": 2.0, "label": 1}]}]
    assert "1 of 3 watched" in out.detail
    assert _outcome(_run({"no_attack_target": {"test_indices": [0, 2]}}, facts), "no_attack_target").passed
    every = _outcome(_run({"no_attack_target": {}}, facts), "no_attack_target")
    assert every.value == 2 and [o["test_index"] for o in every.offenders] == [1, 3]
    # Without a mislabel pass, a baseline's entries are not judged (none has "disappeared").
    alone = _run({"no_attack_target": {}}, Facts(N, None, _targets(set())), Baseline.of([{"id": "a", "given_label": 0}]))
    assert alone.passed and alone.disappeared == [] and alone.new == []


def test_result_dict_is_json_and_complete() -> None:
    result = _run({"max_new_flagged": 0, "no_attack_target": {"test_indices": [0]}}, _facts({5: 0}, _targets(set())))
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["passed"] is False and data["flagged"] == 1 and data["n_train"] == N
    assert data["mislabel_method"] == "combined" and data["target_method"] == "gas-l"
    assert [(r["rule"], r["passed"]) for r in data["rules"]] == [("no_attack_target", True), ("max_new_flagged", False)]
    assert data["baseline"] is None and [e["train_index"] for e in data["new_flagged"]] == [5]


@pytest.mark.parametrize("checks, words", [
    ({"max_flagged_mislabels": 1}, "checks: unknown rule 'max_flagged_mislabels'"),
    ({}, "checks: give at least one rule"),
    ({"max_flagged_mislabel_fraction": 2},
     "checks.max_flagged_mislabel_fraction: must be less than or equal to 1, got 2"),
    ({"no_attack_target": {"test_indices": [0], "methd": "gas"}}, "checks.no_attack_target.methd: unknown key"),
])
def test_bad_checks_are_recipe_errors_naming_the_key(checks: dict[str, Any], words: str) -> None:
    data = {"model": {"factory": "m.py:f"}, "checkpoints": [{"path": "c.pt"}],
            "data": {"train": {"format": "tensors", "path": "t.pt"}}, "checks": checks}
    with pytest.raises(RecipeError) as err:
        parse_recipe(data, base_dir=Path("."), source="r.yaml")
    assert err.value.message.startswith("r.yaml: " + words)


def test_junit_has_one_case_per_rule_with_numbers_and_offenders() -> None:
    result = _run({"max_flagged_mislabel_fraction": 0.01, "max_new_flagged": 5,
                   "no_attack_target": {"test_indices": [1]}}, _facts({5: 0, 7: 1}, _targets({1})))
    root = ET.fromstring(junit_xml(result))
    cases = root.findall("./testsuite/testcase")
    assert [c.get("name") for c in cases] == ["max_flagged_mislabel_fraction", "no_attack_target", "max_new_flagged"]
    assert root.find("testsuite").get("failures") == "2"  # type: ignore[union-attr]
    frac = cases[0].find("failure")
    assert frac is not None and "2 of 100" in frac.get("message", "")
    assert "value 0.02 > limit 0.01" in frac.text and "train 5 (id id0005" in frac.text  # type: ignore[operator]
    assert "test 1 (anomaly 9" in cases[1].find("failure").text  # type: ignore[union-attr, operator]
    assert cases[2].find("failure") is None


def test_markdown_reports_and_step_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run({"max_new_flagged": 0}, _facts({5: 0}), Baseline.of([{"id": "old", "given_label": 1}]))
    md = markdown(result)
    assert md.startswith("## influence-cli check: ❌ max_new_flagged failed")
    assert "| 5 | `id0005` | 0 | 1 |" in md and "1 disappeared" in md and "`old`" in md
    written = write_check_reports(result, tmp_path / "out")
    assert [p.name for p in written] == ["check.json", "check.md"]
    assert json.loads(written[0].read_text())["passed"] is False
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    assert append_step_summary(result) is None
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    append_step_summary(result)
    assert summary.read_text() == "earlier step\n" + md + "\n"


def test_too_few_watched_candidates_name_the_recipe_key(tmp_path) -> None:
    from types import SimpleNamespace

    from influence_cli.audits.check import watched_candidates
    from influence_cli.errors import RecipeError

    session = SimpleNamespace(test=[0] * 5, recipe=SimpleNamespace(source="r.yaml"))
    spec = SimpleNamespace(test_indices=[0], candidates=[1])
    with pytest.raises(RecipeError, match=r"^r.yaml: checks.no_attack_target.candidates: target-identify compares "
                                          r"candidates; give at least 3 distinct test examples \(got 2\)$"):
        watched_candidates(session, spec)
