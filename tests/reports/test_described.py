"""The reports show what each example is (issue 15), on an imagefolder run and a Trainer text run:
class names, files and texts in every CSV, summary.md, check.md, JUnit and report.html (escaped,
shortened, the whole text or path as a tooltip)."""

from __future__ import annotations

import csv
import json
import shutil
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fixtures.audit_runs import image_audit, text_audit
from fixtures.hf_runs import LONG_TEXT, LONG_TEXT_ROW
from influence_cli.loading.examples import shorten
from influence_cli.reports.html import THUMB_CHARS, render_report


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return image_audit(tmp_path_factory)


@pytest.fixture(scope="module")
def texts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return text_audit(tmp_path_factory)


def _json(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text())


def _csv(folder: Path, name: str) -> list[dict[str, str]]:
    with open(folder / name, newline="") as fh:
        return list(csv.DictReader(fh))


def test_csvs_carry_label_names_and_files(images: Path) -> None:
    ranking = _json(images, "mislabels.json")["ranking"]
    rows = _csv(images, "mislabels.csv")
    assert list(rows[0]) == ["rank", "train_index", "score", "given_label", "given_label_name", "suggested_label",
                             "suggested_label_name", "suggested_prob", "flagged", "path"]
    assert [(r["given_label_name"], r["suggested_label_name"], r["path"]) for r in rows] == [
        (e["given_label_name"], e["suggested_label_name"], e["path"]) for e in ranking]
    test = _json(images, "influence.json")["test"]
    rows = _csv(images, "influence.csv")
    assert [(r["test_path"], r["prediction_name"], r["train_label_name"], r["train_path"]) for r in rows] == [
        (t["path"], t["prediction_name"], e["label_name"], e["path"]) for t in test
        for side in ("proponents", "opponents") for e in t[side]]
    targets = {t["test_index"]: t for t in _json(images, "targets.json")["test"]}
    for r in _csv(images, "targets.csv"):
        t = targets[int(r["test_index"])]
        assert (r["label_name"], r["prediction_name"], r["path"]) == (t["label_name"], t["prediction_name"], t["path"])


def test_csvs_carry_texts(texts: Path) -> None:
    rows = _csv(texts, "mislabels.csv")
    assert list(rows[0])[-1] == "text" and {r["given_label_name"] for r in rows} <= {"neg", "pos"}
    assert next(r["text"] for r in rows if r["train_index"] == str(LONG_TEXT_ROW)) == LONG_TEXT
    rows = _csv(texts, "influence.csv")
    assert {"test_text", "train_text", "test_label_name", "train_label_name"} <= set(rows[0])
    assert all(r["test_text"] and r["train_text"] for r in rows)
    assert [r["text"] for r in _csv(texts, "targets.csv")] == [t["text"] for t in _json(texts, "targets.json")["test"]]


def test_summary_and_check_markdown_show_names_files_and_texts(images: Path, texts: Path) -> None:
    summary = (images / "summary.md").read_text()
    first = _json(images, "mislabels.json")["ranking"][0]
    assert "| circle (0) | stripes (2) |" in summary and "| path |" in summary
    assert Path(first["path"]).name in summary  # the file, shortened from its start to fit
    check_md = (images / "check.md").read_text()
    for e in _json(images, "check.json")["new_flagged"]:
        assert f"| {e['given_label_name']} ({e['given_label']}) |" in check_md and f"| {e['path']} |" in check_md
    assert "label circle (0): 1 flagged &gt; 0" in check_md  # the misfiled stripes image (2 before issue 14)
    summary = (texts / "summary.md").read_text()
    assert "| text |" in summary and "input_ids" not in summary
    data = _json(texts, "mislabels.json")
    for e in data["ranking"][:max(min(50, data["n_flagged"]), 10)]:  # the rows summary.md shows
        assert f"| {e['train_index']} | {e['score']:.4g} | {e['given_label_name']} ({e['given_label']}) |" in summary
        assert f"| {shorten(e['text'], 60)} |" in summary


def test_junit_failures_name_the_offenders(images: Path, texts: Path) -> None:
    failures = {case.get("name"): case.find("failure") for case in ET.parse(images / "junit.xml").iter("testcase")}
    new = _json(images, "check.json")["new_flagged"]
    for failure in failures.values():
        for e in new:
            assert (f"train {e['train_index']} {e['path']} (id {e['id']}, label {e['given_label_name']} "
                    f"({e['given_label']}) → {e['suggested_label_name']} ({e['suggested_label']})") in failure.text
    failure = next(ET.parse(texts / "junit.xml").iter("failure"))
    e = _json(texts, "check.json")["new_flagged"][0]
    assert f'train {e["train_index"]} "{e["text"]}" (id {e["id"]}, label {e["given_label_name"]}' in failure.text


def test_check_json_offenders_carry_names_and_files(images: Path) -> None:
    data = _json(images, "check.json")
    assert all(set(e) >= {"given_label_name", "suggested_label_name", "path"} for e in data["new_flagged"])
    assert [o["path"] for o in data["rules"][0]["offenders"]] == [e["path"] for e in data["new_flagged"]]


def test_baseline_lists_names_and_files_sorted_by_id(images: Path, texts: Path) -> None:
    entries = _json(images, "baseline.json")["entries"]
    flagged = {e["id"]: e for e in _json(images, "check.json")["new_flagged"]}
    assert [e["id"] for e in entries] == sorted(flagged)
    recipe_folder = images.parent / "image-run"  # paths below the recipe's folder are stored relative to it
    assert entries == [{"id": i, "label": flagged[i]["given_label"], "label_name": flagged[i]["given_label_name"],
                        "path": Path(flagged[i]["path"]).relative_to(recipe_folder).as_posix()} for i in sorted(flagged)]
    rows = [json.loads(line) for line in (texts.parent / "text-run" / "train.jsonl").read_text().splitlines()]
    for e in _json(texts, "baseline.json")["entries"]:
        assert any(shorten(r["text"], 80) == e["text"] and r["label"] == e["label_name"] for r in rows)


class _Elements(HTMLParser):
    """(tag, class, title, text) of every element with a ``title`` or of the given classes."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[list[str]] = []
        self.cells: list[str] = []
        self._open: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if "title" in a:
            self._open = [tag, a.get("class") or "", a["title"] or "", ""]
            self.found.append(self._open)

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open[3] += data
        self.cells.append(data)

    def handle_endtag(self, tag: str) -> None:
        self._open = None


def _parsed(page: str) -> _Elements:
    parser = _Elements()
    parser.feed(page)
    return parser


def test_report_shows_class_names_and_files_under_the_pictures(images: Path) -> None:
    page = _parsed((images / "report.html").read_text())
    paths = {e["path"] for e in _json(images, "mislabels.json")["ranking"]}
    captions = [(title, text) for tag, cls, title, text in page.found if cls == "path"]
    assert {title for title, _ in captions} >= paths  # every ranked file, whole, as the tooltip
    assert all(text.startswith("…/") and title.endswith(text[1:]) for title, text in captions if text != title)
    assert {"circle (0)", "square (1)", "stripes (2)"} <= set(page.cells)


def test_report_shows_texts_not_token_ids(texts: Path) -> None:
    text = (texts / "report.html").read_text()
    page = _parsed(text)
    assert "input_ids" not in text and {"neg (0)", "pos (1)"} <= set(page.cells)
    shown = {title: body for tag, cls, title, body in page.found if cls == "thumb text"}
    assert shown[LONG_TEXT] == shorten(LONG_TEXT, THUMB_CHARS) != LONG_TEXT  # shortened, the whole text as tooltip
    rows = {json.loads(line)["text"] for line in (texts.parent / "text-run" / "train.jsonl").read_text().splitlines()}
    assert set(shown) <= rows | {json.loads(line)["text"] for line in
                                 (texts.parent / "text-run" / "test.jsonl").read_text().splitlines()}


def test_texts_and_paths_from_the_files_are_escaped(texts: Path, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(texts, folder)
    (folder / "run.json").unlink()  # inputs cannot be re-read: the page shows the files' own texts
    markup = '"><script>alert(1)</script>'
    doc = _json(folder, "mislabels.json")
    doc["ranking"][0]["text"] = markup + " " + "x" * 200
    (folder / "mislabels.json").write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match="inputs not shown"):
        page = render_report(folder)
    assert "<script" not in page and "&quot;&gt;&lt;script&gt;" in page
    assert any(title == doc["ranking"][0]["text"] for _, _, title, _ in _parsed(page).found)
