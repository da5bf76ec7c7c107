"""Reports of ``check``: ``check.json`` (the stable layout of :meth:`CheckResult.to_dict`),
``check.md`` (also appended to ``$GITHUB_STEP_SUMMARY``), a JUnit XML file with one test case per
rule, and the terminal table."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from html import escape
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from influence_cli import distributed
from influence_cli.audits.check import CheckResult
from influence_cli.files import atomic_write, write_json
from influence_cli.loading.examples import label_text
from influence_cli.reports.entries import LINE_CHARS, DescriptionColumn, line_item
from influence_cli.reports.files import markdown_table

SUITE = "influence-cli check"


def _offender(o: dict[str, Any]) -> str:
    """One offender in a line: a training example (mislabel rules) or a test example (targets), each
    with its file path (whole, to open it) or the start of its text."""
    if "train_index" in o:
        return (f"train {line_item(o)} (id {o['id']}, label {label_text(o, 'given_label')} → "
                f"{label_text(o, 'suggested_label')} p={o['suggested_prob']:.2f}, score {o['score']:.3g})")
    label = f", label {label_text(o, 'label')}" if "label" in o else ""
    return (f"test {line_item(o, 'test_index')} (anomaly {o['anomaly_score']:.3g}{label}, prediction "
            f"{label_text(o, 'prediction')}); suspects: {', '.join(line_item(s) for s in o['suspects'])}")


def _value(value: float) -> str:
    return f"{value:.4g}"


def text_report(result: CheckResult) -> Group:
    """One table row per rule (status, value, limit, detail), then each failing rule's worst offenders."""
    table = Table(title=f"influence-cli check: {'PASS' if result.passed else 'FAIL'}", title_justify="left")
    for col in ("rule", "status", "value", "limit"):
        table.add_column(col, no_wrap=True)
    table.add_column("detail", overflow="fold")
    for o in result.outcomes:
        table.add_row(o.rule, "[green]pass[/]" if o.passed else "[bold red]FAIL[/]", _value(o.value),
                      _value(o.limit), o.detail)
    lines = [f"{o.rule}: worst offenders\n" + "\n".join(f"  {_offender(x)}" for x in o.offenders[:5])
             for o in result.outcomes if o.offenders]
    return Group(table, *(Text(line) for line in lines))


def markdown(result: CheckResult) -> str:
    """The summary a reviewer reads in the pull request."""
    verdict = "✅ all rules pass" if result.passed else "❌ " + ", ".join(o.rule for o in result.outcomes
                                                                          if not o.passed) + " failed"
    lines = [f"## influence-cli check: {verdict}", ""]
    lines.append(markdown_table(["rule", "status", "value", "limit", "detail"],
                                [(o.rule, "pass" if o.passed else "**FAIL**", _value(o.value), _value(o.limit),
                                  o.detail) for o in result.outcomes]))
    if result.new:
        shown = result.new[:50]
        text = DescriptionColumn.of(shown, LINE_CHARS, whole_path=True)
        lines.append(f"### New flagged training examples ({len(result.new)})\n")
        lines.append(markdown_table(["train index", "id", "given label", "suggested", "prob", "score", *text.header],
                                    [(e["train_index"], f"`{e['id']}`", label_text(e, "given_label"),
                                      label_text(e, "suggested_label"), e["suggested_prob"], e["score"],
                                      *text.cells(e)) for e in shown]))
        if len(result.new) > 50:
            lines.append(f"... and {len(result.new) - 50} more in check.json\n")
    for o in result.outcomes:
        if o.rule == "no_attack_target" and o.offenders:
            lines.append("### Flagged attack targets\n")
            lines += [f"- {escape(_offender(x), quote=False)}" for x in o.offenders]  # Markdown renders raw HTML
            lines.append("")
    if result.baseline is not None:
        lines.append(f"Baseline: {len(result.baseline.entries)} accepted example(s), {result.accepted} still flagged, "
                     f"{len(result.disappeared)} disappeared (fixed, removed or no longer flagged)"
                     + (": " + ", ".join(f"`{e['id']}`" for e in result.disappeared[:20]) if result.disappeared
                        else "") + ".\n")
    return "\n".join(lines)


def junit_xml(result: CheckResult) -> str:
    """JUnit XML: one ``<testcase>`` per rule; a failing rule's ``<failure>`` carries the numbers
    (message) and the worst offenders (text)."""
    failures = sum(not o.passed for o in result.outcomes)
    suites = ET.Element("testsuites", name=SUITE, tests=str(len(result.outcomes)), failures=str(failures))
    suite = ET.SubElement(suites, "testsuite", name=SUITE, tests=str(len(result.outcomes)),
                          failures=str(failures), errors="0", skipped="0")
    for o in result.outcomes:
        case = ET.SubElement(suite, "testcase", classname="influence-cli.check", name=o.rule)
        if not o.passed:
            failure = ET.SubElement(case, "failure", message=o.detail, type="CheckFailed")
            failure.text = "\n".join([f"value {_value(o.value)} > limit {_value(o.limit)}", "worst offenders:",
                                      *(f"  {_offender(x)}" for x in o.offenders)])
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def write_check_reports(result: CheckResult, out: Path) -> list[Path]:
    """``check.json`` and ``check.md`` in ``out``; returns the paths written."""
    return [write_json(out / "check.json", result.to_dict()), atomic_write(out / "check.md", markdown(result))]


def append_step_summary(result: CheckResult) -> Path | None:
    """Append the Markdown summary to ``$GITHUB_STEP_SUMMARY`` when it is set (GitHub Actions)."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target or not distributed.is_main():  # under torchrun, rank 0 alone appends
        return None
    with open(target, "a", encoding="utf-8") as fh:
        fh.write(markdown(result) + "\n")
    return Path(target)
