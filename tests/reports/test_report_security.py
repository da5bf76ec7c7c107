"""``report`` on a results folder that came from somewhere else: nothing named in it runs, nothing in
it reaches the page as markup, and a malformed file is one line and exit 2 (issue 12)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from typer.testing import CliRunner, Result

from conftest import TinyRun, write_tiny_recipe
from influence_cli.cli import app
from influence_cli.recipe import load_recipe
from influence_cli.reports import influence
from influence_cli.reports.files import markdown_table
from influence_cli.reports.run_info import write_run_info

N_TRAIN, N_TEST = 12, 4
SCRIPT = "<script>alert(1)</script>"
DATA_PY = "import torch\ndef load(path):\n    d = torch.load(path)\n    return d['inputs'], d['labels']\n"
# every tag the page's own templates use
PAGE_TAGS = {"html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "h3", "h4", "p", "nav", "a",
             "main", "section", "dl", "dt", "dd", "div", "img", "figure", "figcaption", "br", "table", "thead",
             "tbody", "tr", "th", "td", "span", "article", "pre", "b"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    """A tiny CNN recipe folder (1×8×8 inputs in train.pt / test.pt) and its results folder ``out``:
    hand-made influence.json, mislabels.json, targets.json and the real run.json writer's file."""
    run = write_tiny_recipe(tmp_path_factory.mktemp("tiny"), "cnn", n_train=N_TRAIN, n_test=N_TEST)
    out = run.dir / "out"
    out.mkdir()
    labels = run.train[1].tolist()
    # the reports' own copy of the recipe, with absolute data paths (it has no base_dir)
    recipe = dict(run.data, data={split: {"format": "tensors", "path": str(run.dir / f"{split}.pt")}
                                  for split in ("train", "test")})
    side = [{"train_index": j, "score": 1.0 / (j + 1), "label": labels[j]} for j in range(3)]
    docs = {
        "influence.json": {"method": "tracin", "recipe": recipe, "test": [
            {"test_index": i, "label": 0, "prediction": 1, "proponents": side, "opponents": side}
            for i in range(N_TEST)]},
        "mislabels.json": {"method": "loss", "recipe": recipe, "flag_rule": {"description": "top 2"}, "ranking": [
            {"rank": r + 1, "train_index": i, "score": float(N_TRAIN - r), "given_label": labels[i],
             "suggested_label": 0, "suggested_prob": 0.5, "flagged": r < 2} for r, i in enumerate(range(N_TRAIN))]},
        "targets.json": {"method": "gas", "recipe": recipe, "test": [
            {"test_index": i, "anomaly_score": float(i), "rank": N_TEST - i, "flagged": i == N_TEST - 1,
             "prediction": 0, "suspects": side} for i in range(N_TEST)]},
    }
    for name, doc in docs.items():
        (out / name).write_text(json.dumps(doc))
    write_run_info(out, "score", load_recipe(run.recipe_path), seconds=1.5)
    return run


@pytest.fixture
def folder(tiny: TinyRun, tmp_path: Path) -> Path:
    """A fresh copy of the results folder (its run.json's paths still point at the tiny recipe folder)."""
    return Path(shutil.copytree(tiny.dir / "out", tmp_path / "out"))


def _edit(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _report(folder: Path, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(app, ["report", str(folder), "--quiet", *args], input=stdin)


def _page(folder: Path) -> str:
    return (folder / "report.html").read_text()


def _assert_inputs_withheld(result: Result, folder: Path, marker: Path) -> None:
    """Exit 0, nothing ran, every section rendered, and the page and one stderr line say how to get inputs."""
    assert result.exit_code == 0, result.output
    assert not marker.exists()
    page = _page(folder)
    assert all(f'<section id="{s}">' in page for s in ("influence", "mislabels", "targets", "run"))
    assert "data:image/png" not in page and page.count('class="thumb none"') > 0
    note = re.search(r'<p class="note">([^<]*)</p>', page)
    assert note and f"influence-cli report {folder} --recipe RECIPE" in note.group(1)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning:") and "--recipe RECIPE" in lines[0]


def _touching(marker: Path, then: str) -> str:
    """Python source that creates ``marker`` when imported, then defines ``then``."""
    return f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n{then}:\n    pass\n"


def _factory(marker: Path) -> dict[str, Any]:
    return {"format": "factory", "factory": "os:system", "kwargs": {"command": f"touch {marker}"}}


def _in_run_json(split: str) -> Callable[[Path, Path], None]:
    def plant(folder: Path, marker: Path) -> None:
        _edit(folder / "run.json", lambda run: run["recipe"]["data"].update({split: _factory(marker)}))
    return plant


def _file_in_folder(folder: Path, marker: Path) -> None:
    (folder / "evil.py").write_text(_touching(marker, "def make()"))

    def point_at_it(run: dict[str, Any]) -> None:
        run["recipe"]["data"]["test"]["path"] = str(Path(run["base_dir"]) / "test.pt")
        run["base_dir"] = str(folder)
        run["recipe"]["data"]["train"] = {"format": "factory", "factory": "evil.py:make"}

    _edit(folder / "run.json", point_at_it)


def _in_a_report_without_run_json(folder: Path, marker: Path) -> None:
    (folder / "run.json").unlink()
    for name in ("influence.json", "mislabels.json", "targets.json"):
        _edit(folder / name, lambda doc: doc["recipe"]["data"].update(train=_factory(marker)))


@pytest.mark.parametrize("plant", [_in_run_json("train"), _in_run_json("test"), _file_in_folder,
                                   _in_a_report_without_run_json],
                         ids=["run.json train", "run.json test", "file.py in DIR", "report's recipe"])
def test_report_never_runs_a_factory_named_in_the_folder(folder: Path, tmp_path: Path,
                                                         plant: Callable[[Path, Path], None]) -> None:
    marker = tmp_path / "pwned"
    plant(folder, marker)
    result = _report(folder)
    _assert_inputs_withheld(result, folder, marker)
    assert "factory" in _page(folder)


def test_report_never_builds_a_dataset_that_unpickles(folder: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "pwned"
    monkeypatch.setattr("influence_cli.loading.vision.load_torchvision_dataset", lambda *args: marker.touch())
    _edit(folder / "run.json", lambda run: run["recipe"]["data"].update(
        train={"format": "torchvision", "name": "LSUN", "root": str(folder)}))
    _assert_inputs_withheld(_report(folder), folder, marker)


def _tokenizer_code(folder: Path, marker: Path) -> dict[str, Any]:
    """A tokenizer folder whose tokenizer_config.json names its own code (``auto_map``)."""
    (folder / "tok").mkdir()
    (folder / "tok" / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": [None, "tok.T"]}}))
    (folder / "tok" / "tok.py").write_text(_touching(marker, "class T"))
    return {"train": {"format": "jsonl", "path": "train.jsonl", "tokenizer": "tok"}}


def _config_code(folder: Path, marker: Path) -> dict[str, Any]:
    """A model folder whose config.json names its own code, and model.kwargs asking to trust it."""
    (folder / "model").mkdir()
    (folder / "model" / "config.json").write_text(json.dumps({"model_type": "custom_made", "auto_map": {
        "AutoConfig": "conf.C"}}))
    (folder / "model" / "conf.py").write_text(_touching(marker, "class C"))
    return {"model": {"transformers": "model", "kwargs": {"trust_remote_code": True}},
            "train": {"format": "jsonl", "path": "train.jsonl"}}


@pytest.mark.parametrize("plant", [_tokenizer_code, _config_code], ids=["tokenizer auto_map", "config auto_map"])
def test_text_data_never_loads_code_from_a_model_folder(folder: Path, tmp_path: Path,
                                                        plant: Callable[[Path, Path], dict[str, Any]]) -> None:
    marker = tmp_path / "pwned"
    (folder / "train.jsonl").write_text("".join(json.dumps({"text": "good film", "label": 0}) + "\n"
                                                for _ in range(N_TRAIN)))
    spec = plant(folder, marker)

    def point_at_text(run: dict[str, Any]) -> None:
        run["base_dir"] = str(folder)
        run["recipe"]["model"] = spec.get("model", run["recipe"]["model"])
        run["recipe"]["data"] = {"train": spec["train"]}

    _edit(folder / "run.json", point_at_text)
    # transformers asks "Do you wish to run the custom code?" on a terminal unless told not to: answer yes
    _assert_inputs_withheld(_report(folder, stdin="y\n" * 4), folder, marker)


def test_recipe_option_reads_inputs_through_the_users_own_recipe(folder: Path, tiny: TinyRun, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _in_run_json("train")(folder, marker)
    mine = tmp_path / "mine"
    shutil.copytree(tiny.dir, mine, ignore=shutil.ignore_patterns("out"))
    (mine / "data.py").write_text(DATA_PY)
    recipe = dict(tiny.data, data={"train": {"format": "factory", "factory": "data.py:load",
                                             "kwargs": {"path": str(mine / "train.pt")}},
                                   "test": tiny.data["data"]["test"]})
    (mine / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = _report(folder, "--recipe", str(mine / "recipe.yaml"))
    assert result.exit_code == 0 and result.stderr == "", result.output
    assert not marker.exists()
    page = _page(folder)
    assert 'class="note"' not in page and "no input" not in page
    assert page.count('<img class="thumb" src="data:image/png;base64,') >= N_TRAIN + N_TEST
    missing = _report(folder, "--recipe", str(tmp_path / "absent.yaml"))
    assert missing.exit_code == 2 and missing.stderr.startswith("error:") and "absent.yaml" in missing.stderr


def test_html_option_draws_inputs_through_the_commands_own_recipe(tiny_recipe: Callable[..., TinyRun]) -> None:
    run = tiny_recipe("cnn", n_train=N_TRAIN, n_test=N_TEST)
    (run.dir / "data.py").write_text(DATA_PY)
    run.rewrite(data={"train": {"format": "factory", "factory": "data.py:load",
                                "kwargs": {"path": str(run.dir / "train.pt")}}, "test": run.data["data"]["test"]})
    result = CliRunner().invoke(app, ["score", str(run.recipe_path), "-k", "2", "--quiet", "--html"])
    assert result.exit_code == 0, result.output
    page = _page(run.dir / "out")
    assert 'class="note"' not in page and page.count('<img class="thumb" src="data:image/png') >= N_TEST


class _Tags(HTMLParser):
    """Every start tag with its attributes, and the page's style sheet."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.style = ""
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_style = tag == "style"

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.style += data

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False


def _plant_markup(folder: Path) -> None:
    """Markup in every kind of place data reaches the page: labels, methods, texts, paths, names."""
    def mislabels(doc: dict[str, Any]) -> None:
        doc["method"] = "<b>m</b>"
        doc["flag_rule"]["description"] = "<iframe src=x>"
        doc["ranking"][0].update(given_label=SCRIPT, suggested_label="<img src=x onerror=alert(2)>")

    def influence_(doc: dict[str, Any]) -> None:
        doc["method"] = SCRIPT
        doc["test"][0].update(label=SCRIPT, prediction="<svg onload=alert(3)>")
        doc["test"][0]["proponents"][0]["label"] = SCRIPT

    def run(doc: dict[str, Any]) -> None:
        doc["recipe_path"] = "</pre><script>alert(4)</script>"
        doc["version"] = SCRIPT
        doc["checkpoints"] = [{"path": "<img src=x onerror=alert(5)>", "learning_rate": SCRIPT, "sha256": SCRIPT}]
        doc["commands"] = {"<svg onload=alert(6)>": {"finished": SCRIPT, "seconds": 1.0,
                                                     "tasks": [{"task": SCRIPT, "total": 3, "seconds": 0.5}]}}
        doc["recipe"]["output"] = SCRIPT

    _edit(folder / "mislabels.json", mislabels)
    _edit(folder / "influence.json", influence_)
    _edit(folder / "targets.json", lambda doc: doc["test"][-1].update(prediction=SCRIPT))
    _edit(folder / "run.json", run)
    (folder / "check.json").write_text(json.dumps({"passed": False, "rules": [
        {"rule": SCRIPT, "passed": False, "value": SCRIPT, "limit": 1, "detail": "<a href='https://x'>x</a>"}],
        "new_flagged": [{"train_index": 1, "given_label": SCRIPT}]}))


def test_text_from_the_files_is_escaped_never_markup(folder: Path) -> None:
    _plant_markup(folder)
    result = _report(folder)
    assert result.exit_code == 0, result.output
    page = _page(folder)
    parser = _Tags()
    parser.feed(page)
    assert {tag for tag, _ in parser.tags} <= PAGE_TAGS and [tag for tag, _ in parser.tags].count("b") == 1
    assert all(attrs["href"].startswith("#") for tag, attrs in parser.tags if tag == "a")
    assert all(attrs["src"].startswith("data:image/") for tag, attrs in parser.tags if tag == "img")
    assert not any(name.startswith("on") for _, attrs in parser.tags for name in attrs)
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 10
    assert "&lt;img src=x onerror=alert(5)&gt;" in page and "&lt;/pre&gt;&lt;script&gt;alert(4)" in page


def test_content_security_policy_allows_only_the_pages_style_and_data_images(folder: Path) -> None:
    assert _report(folder).exit_code == 0
    parser = _Tags()
    parser.feed(_page(folder))
    csp = [attrs["content"] for tag, attrs in parser.tags
           if tag == "meta" and attrs.get("http-equiv") == "Content-Security-Policy"]
    assert len(csp) == 1 and parser.tags[:3] == [("html", {"lang": "en"}), ("head", {}), ("meta", {"charset": "utf-8"})]
    assert parser.tags[3][0] == "meta"  # before the style sheet and every image
    rules = dict(d.strip().split(" ", 1) for d in csp[0].split(";"))
    digest = base64.b64encode(hashlib.sha256(parser.style.encode()).digest()).decode()
    assert rules == {"default-src": "'none'", "img-src": "data:", "style-src": f"'sha256-{digest}'",
                     "base-uri": "'none'", "form-action": "'none'"}  # no script-src: scripts fall to 'none'


def test_summary_markdown_escapes_text_from_the_data() -> None:
    table = markdown_table(["a", "b"], [[SCRIPT, "x | <b>y</b> & z"]])
    assert "<" not in table and "&lt;script&gt;" in table and "x \\| &lt;b&gt;y&lt;/b&gt; &amp; z" in table
    entry = {"train_index": 3, "score": 1.0, "label": 0, "text": "<img src=x onerror=alert(1)>"}
    summary = influence._summary({"method": "tracin", "checkpoints": [{"path": "<b>ck</b>.pt", "learning_rate": 0.1}],
                                  "test": [{"test_index": 0, "label": 0, "prediction": 1, "text": SCRIPT,
                                            "proponents": [entry], "opponents": [entry]}]})
    assert "<" not in summary and "&lt;script&gt;" in summary and "3: &lt;img src=x" in summary


MALFORMED: list[tuple[str, Any, str]] = [
    ("influence.json", "{not json", "cannot read"),
    ("mislabels.json", b"\xff\xfe{}", "cannot read"),
    ("targets.json", "", "cannot read"),
    ("check.json", "[" * 100_000 + "]" * 100_000, "cannot read"),
    ("mislabels.json", "[1, 2]", "JSON object"),
    ("run.json", "null", "JSON object"),
    ("mislabels.json", {"method": "loss"}, "ranking: missing"),
    ("mislabels.json", {"ranking": {"0": {}}}, "ranking: expected a list, got an object"),
    ("mislabels.json", {"ranking": [7]}, "ranking[0]: expected an object, got 7"),
    ("mislabels.json", {"ranking": [{"rank": 1, "train_index": "3"}]},
     'ranking[0].train_index: expected an integer, got "3"'),
    ("mislabels.json", {"ranking": [{"rank": 1, "train_index": -1}]},
     "ranking[0].train_index: expected a non-negative integer, got -1"),
    ("mislabels.json", {"ranking": [{"rank": 1, "train_index": 0, "flagged": "yes"}]}, "ranking[0].flagged"),
    ("mislabels.json", {"ranking": [], "flag_rule": "high"}, "flag_rule: expected"),
    ("influence.json", {"test": [{"test_index": 0, "proponents": []}]}, "test[0].opponents: missing"),
    ("influence.json", {"test": [{"test_index": 0, "proponents": [{"score": 1.0}], "opponents": []}]},
     "test[0].proponents[0].train_index: missing"),
    ("influence.json", {"test": [{"test_index": 1.5, "proponents": [], "opponents": []}]}, "test[0].test_index"),
    ("targets.json", {"test": [{"test_index": 0, "rank": 1, "anomaly_score": "high"}]}, "test[0].anomaly_score"),
    ("targets.json", {"test": [{"test_index": 0, "rank": 1, "anomaly_score": 1.0, "suspects": 3}]},
     "test[0].suspects: expected a list, got 3"),
    ("targets.json", {"test": [{"test_index": 0, "anomaly_score": 1.0}]}, "test[0].rank: missing"),
    ("check.json", {"passed": True, "rules": ["max_label_errors"]}, "rules[0]: expected an object"),
    ("check.json", {"rules": []}, "passed: missing"),
    ("check.json", {"passed": 1, "rules": []}, "passed: expected true or false, got 1"),
    ("run.json", {"commands": {"score": {"seconds": "fast"}}}, 'commands.score.seconds: expected a number, got "fast"'),
    ("run.json", {"commands": {"a\nb": {"tasks": [{"task": "x", "total": 1}]}}}, "commands['a\\nb'].tasks[0].seconds"),
    ("run.json", {"checkpoints": "epoch1.pt"}, "checkpoints: expected a list"),
    ("run.json", {"recipe": ["model"]}, "recipe: expected an object"),
    ("run.json", {"base_dir": 3}, "base_dir: expected a string, got 3"),
    ("ground_truth.json", {"flipped_train_indices": ["a"]}, "flipped_train_indices[0]"),
    ("ground_truth.json", {"target_test_indices": 5}, "target_test_indices: expected a list"),
]


@pytest.mark.parametrize("name, content, says", MALFORMED,
                         ids=[f"{n}-{s.split(':')[0][:30]}-{i}" for i, (n, _, s) in enumerate(MALFORMED)])
def test_malformed_file_is_one_line_and_exit_2(folder: Path, name: str, content: Any, says: str) -> None:
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    (folder / "report.html").write_text("previous")
    result = _report(folder)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ")
    assert says in lines[0]
    assert (folder / "report.html").read_text() == "previous"
