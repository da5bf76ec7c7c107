"""The HTML report: sections present, counts right, images inlined, nothing external; run.json;
``report`` and ``score --html`` through the CLI."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import write_tiny_recipe
from influence_cli.cli import app
from influence_cli.reports import html as html_report
from influence_cli.reports.run_info import read_run_info
from influence_cli.reports.thumbnails import as_image, thumbnail

N_TRAIN, N_TEST, K = 40, 6, 3


def make_run(folder: Path, *, html: bool = True) -> Path:
    """A tiny CNN run on 1×8×8 images (recipe, data, 2 checkpoints); ``score --html`` into ``folder/out``,
    plus hand-made mislabels.json, targets.json and ground_truth.json in the issue-3/4 layouts."""
    tiny = write_tiny_recipe(folder, "cnn", n_train=N_TRAIN, n_test=N_TEST, learning_rates=(0.1, 0.05),
                             batch_size=16, dtype="float32")
    recipe = tiny.data
    args = ["score", str(folder / "recipe.yaml"), "-k", str(K), "--quiet"] + (["--html"] if html else [])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = folder / "out"
    labels = tiny.train[1].tolist()
    ranking = [{"rank": r + 1, "train_index": i, "score": float(N_TRAIN - r), "given_label": labels[i],
                "suggested_label": (labels[i] + 1) % 3, "suggested_prob": 0.9, "flagged": r < 4}
               for r, i in enumerate(reversed(range(N_TRAIN)))]
    (out / "mislabels.json").write_text(json.dumps({"method": "tracin", "recipe": recipe, "ranking": ranking,
                                                    "threshold": float(N_TRAIN - 3)}))
    targets = [{"test_index": i, "anomaly_score": float(N_TEST - i), "rank": i + 1, "flagged": i < 2,
                "prediction": 0, "suspects": [{"train_index": j, "score": 1.0 / (j + 1), "label": labels[j]}
                                              for j in range(5)]} for i in range(N_TEST)]
    (out / "targets.json").write_text(json.dumps({"method": "gas", "recipe": recipe, "test": targets}))
    (out / "check.json").write_text(json.dumps({
        "passed": False, "recipe": recipe, "n_train": N_TRAIN, "flagged": 4,
        "rules": [{"rule": "max_label_errors", "passed": False, "value": 4, "limit": 2, "detail": "4 flagged"},
                  {"rule": "max_targets", "passed": True, "value": 0, "limit": 0, "detail": ""}],
        "new_flagged": [{k: e[k] for k in ("train_index", "given_label", "suggested_label", "suggested_prob", "score")}
                        for e in ranking[:3]]}))
    (out / "ground_truth.json").write_text(json.dumps({"flipped_train_indices": [39, 38, 10, 0],
                                                       "target_test_indices": [1], "poison_train_indices": [0, 2, 30]}))
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def page(run_dir: Path) -> str:
    return html_report.write_report(run_dir).read_text()


def test_score_html_writes_report_and_run_json(run_dir: Path) -> None:
    run = read_run_info(run_dir)
    assert run is not None and set(run["commands"]) == {"score"}
    assert run["recipe_path"] == str((run_dir.parent / "recipe.yaml").resolve())
    assert run["base_dir"] == str(run_dir.parent.resolve())
    assert [c["learning_rate"] for c in run["checkpoints"]] == pytest.approx([0.1, 0.05])
    assert run["commands"]["score"]["seconds"] > 0
    assert any("train" in t["task"] for t in run["commands"]["score"]["tasks"])


def test_sections_present(page: str) -> None:
    for sid in ("overview", "checks", "influence", "mislabels", "targets", "run"):
        assert f'<section id="{sid}">' in page
        assert f'href="#{sid}"' in page


def test_counts(page: str) -> None:
    assert page.count('<article class="test"') == N_TEST
    # every test example: K proponents + K opponents, each with a thumbnail and its score
    assert page.count('<figure class="example">') == N_TEST * 2 * K + 2 * 5
    assert page.count('<tr class="suspect') == N_TRAIN  # fewer than MAX_SUSPECTS
    assert page.count('<tr class="suspect flagged">') == 4
    assert page.count('<article class="target"') == 2
    assert page.count('<tr class="candidate') == N_TEST
    assert page.count('<tr class="rule flagged">') == 1 and '<p class="verdict fail">' in page
    assert "<dt>checks</dt><dd>FAILED: 1 of 2 rules pass</dd>" in page
    assert "<h3>Newly flagged (3)</h3>" in page
    assert "flag cut 37" in _svg_text(page)  # the threshold key is the histogram's cut


def test_recall_from_ground_truth(page: str) -> None:
    # ranking is 39, 38, ..., 0 and flipped = {39, 38, 10, 0}: top 10% (4) holds 2 of 4
    assert "<dt>recall in top 10% (4)</dt><dd>0.500</dd>" in page
    assert "<dt>precision / recall of the flagged</dt><dd>0.500 / 0.500</dd>" in page
    ap = (1 / 1 + 2 / 2 + 3 / 30 + 4 / 40) / 4
    assert f"<dt>average precision</dt><dd>{ap:.3f}</dd>" in page


def test_flagged_targets_count_their_planted_poison(page: str) -> None:
    # both flagged targets list suspects 0..4, of which 0 and 2 are planted poison
    assert page.count("suspects that are planted poison (truth)</dt><dd>2 of 5 (3 planted)") == 2


def test_images_inlined_and_nothing_external(page: str) -> None:
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/") for s in srcs)
    assert sum(s.startswith("data:image/png;base64,") for s in srcs) >= N_TEST  # thumbnails of 1×8×8 inputs
    assert sum(s.startswith("data:image/svg+xml;base64,") for s in srcs) == 3  # histogram, recall, anomaly
    assert not re.search(r"(src|href)=\"(?!data:|#)", page)
    assert not re.search(r"https?:", page) and "<script" not in page


def test_missing_folder_and_empty_folder_are_one_line_errors(tmp_path: Path) -> None:
    for folder in (tmp_path / "absent", tmp_path):
        result = CliRunner().invoke(app, ["report", str(folder)])
        assert result.exit_code == 2
        assert "nothing to report" in result.output or "no such folder" in result.output
        assert "Traceback" not in result.output


def test_report_command_renders_sections_of_existing_files_only(run_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "mislabels.json").write_text((run_dir / "mislabels.json").read_text())
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report.html").read_text()
    assert '<section id="mislabels">' in page and '<section id="influence">' not in page
    assert "inputs not shown" in page  # no run.json: the recipe's relative paths cannot be resolved


def test_thumbnail_kinds() -> None:
    assert as_image(torch.rand(8, 8)).shape == (8, 8)
    assert as_image(torch.rand(1, 5, 7)).shape == (5, 7)
    assert as_image(torch.rand(3, 4, 4)).shape == (4, 4, 3)
    img = as_image(torch.tensor([[1.0, 3.0], [5.0, 5.0]]))
    assert img.min() == 0 and img.max() == 1 and img[0, 1] == pytest.approx(0.5)
    assert as_image(torch.rand(64)) is None and as_image(torch.rand(2, 8, 8)) is None
    assert thumbnail(torch.rand(8, 8)).image.startswith("data:image/png;base64,")
    text = thumbnail({"input_ids": torch.tensor([5, 6, 0]), "attention_mask": torch.tensor([1, 1, 0])}).text
    assert text == "input_ids: 5 6"


def _svg_text(page: str) -> str:
    """The SVG plots decoded (matplotlib draws text as paths, but keeps it in comments/ids)."""
    blobs = re.findall(r'data:image/svg\+xml;base64,([^"]+)', page)
    return "".join(base64.b64decode(b).decode() for b in blobs)


def test_mislabel_detect_html_and_summary_without_tty(run_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["mislabel-detect", str(run_dir.parent / "recipe.yaml"), "--top", "3",
                                      "--out", str(tmp_path), "--html"])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report.html").read_text()
    assert '<section id="mislabels">' in page and page.count('<tr class="suspect flagged">') == 3
    assert set(read_run_info(tmp_path)["commands"]) == {"mislabel-detect"}
    # not a terminal: plain log lines instead of bars, then the one-screen summary with the report's address
    assert re.search(r"done in \d+\.\d s", result.output)
    assert "influence-cli mislabel-detect" in result.output and (tmp_path / "report.html").as_uri() in result.output


def test_report_open_hands_the_file_uri_to_the_browser(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    monkeypatch.setattr("influence_cli.cli.report.webbrowser.open", opened.append)
    result = CliRunner().invoke(app, ["report", str(run_dir), "--open", "--quiet"])
    assert result.exit_code == 0 and result.output == ""
    assert opened == [(run_dir / "report.html").resolve().as_uri()]
