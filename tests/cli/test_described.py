"""The terminal shows what each example is (issue 15): class names beside the label ids, files and
texts shortened in every command's table, and whole in ``check``'s offender lines (the output of
each command on the imagefolder and Trainer text runs of :mod:`fixtures.audit_runs`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures.audit_runs import image_audit, text_audit
from influence_cli.loading.examples import label_text, shortened
from influence_cli.reports.entries import TERMINAL_CHARS


@pytest.fixture(scope="module", params=["image", "text"])
def audit(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return (image_audit if request.param == "image" else text_audit)(tmp_path_factory)


def _has_row(output: str, *cells: object) -> bool:
    """Whether one line of the output shows every cell, each between the table's column bars."""
    return any(all(f"│ {c} " in line for c in cells) for line in output.splitlines())


def _load(audit: Path, name: str) -> dict:
    return json.loads((audit / name).read_text())


def test_score_table_names_labels_and_shows_the_input(audit: Path) -> None:
    output = (audit / "score.out").read_text()
    for t in _load(audit, "influence.json")["test"]:
        assert _has_row(output, t["test_index"], label_text(t, "label"), label_text(t, "prediction"),
                        shortened(t, TERMINAL_CHARS)), t


def test_mislabel_table_names_given_and_suggested_labels(audit: Path) -> None:
    output = (audit / "mislabel-detect.out").read_text()
    for e in _load(audit, "mislabels.json")["ranking"][:15]:
        assert _has_row(output, e["train_index"], label_text(e, "given_label"),
                        f"{label_text(e, 'suggested_label')} ({e['suggested_prob']:.2f})", shortened(e, TERMINAL_CHARS))


def test_target_table_names_labels_and_shows_the_input(audit: Path) -> None:
    output = (audit / "target-identify.out").read_text()
    tests = _load(audit, "targets.json")["test"]
    for t in tests[:max(5, sum(t["flagged"] for t in tests))]:  # every flagged candidate, at least 5
        assert _has_row(output, t["test_index"], label_text(t, "label"), label_text(t, "prediction"),
                        shortened(t, TERMINAL_CHARS))


def test_check_offenders_show_the_whole_file_or_the_text(audit: Path) -> None:
    output = " ".join((audit / "check.out").read_text().split())  # lines wrap at spaces only
    new = _load(audit, "check.json")["new_flagged"]
    assert new
    for e in new[:5]:  # the worst five of each failing rule
        what = e["path"] if "path" in e else f'"{shortened(e, 80)}"'
        assert (f"train {e['train_index']} {what} (id {e['id']}, label {label_text(e, 'given_label')} → "
                f"{label_text(e, 'suggested_label')} p={e['suggested_prob']:.2f}") in output
