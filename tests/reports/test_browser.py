"""A real browser opens the report: headless Chromium renders the demo's report and a report with
every section; the screenshot is not blank, the DOM has the sections, the console is silent; on an
imagefolder run and a Trainer text run the rendered page names the classes and shows the files and texts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fixtures.audit_runs import image_audit, text_audit
from fixtures.hf_runs import LONG_TEXT
from influence_cli.cli import app
from influence_cli.loading.examples import shorten
from influence_cli.reports.html import REPORT_FILE, THUMB_CHARS, write_report
from reports.test_html import N_TEST, make_run

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
HEADER_RGB = (0x1F, 0x3B, 0x57)  # the report header's background (inline CSS applied)

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed and could not be: install the "
                                "Debian packages `chromium chromium-driver` (.ci/run does where apt-get works)")


def chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium on ``page`` with a fresh profile; console messages are logged to stderr."""
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args, page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--n-train", "100", "--epochs", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    return out / "audit" / REPORT_FILE


@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(make_run(tmp_path_factory.mktemp("full"), html=False))


@pytest.mark.parametrize(("which", "sections", "tests"), [
    ("demo_report", ("overview", "influence", "mislabels", "targets", "run"), 1),  # the demo plants a backdoor
    ("full_report", ("overview", "checks", "influence", "mislabels", "targets", "run"), N_TEST),
])
def test_report_renders_in_chromium(which: str, sections: tuple[str, ...], tests: int, tmp_path: Path,
                                    request: pytest.FixtureRequest) -> None:
    from PIL import Image

    page: Path = request.getfixturevalue(which)
    dom = chromium(page, tmp_path / "profile-dom", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.findall(r'<section id="([a-z]+)">', dom.stdout)
    assert tuple(found) == sections
    assert dom.stdout.count('<article class="test"') == tests
    assert dom.stdout.count("data:image/png;base64,") >= tests  # thumbnails of the inputs

    shot = tmp_path / "shot.png"
    screen = chromium(page, tmp_path / "profile-shot", "--window-size=1200,1600", f"--screenshot={shot}")
    assert screen.returncode == 0 and shot.is_file(), screen.stderr[-2000:]

    console = [line for line in (dom.stderr + screen.stderr).splitlines() if ":CONSOLE" in line]
    assert not console, "console messages:\n" + "\n".join(console)

    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    background = max(colours)[0] / (image.width * image.height)
    assert len(colours) > 100 and background < 0.9  # not blank: text, thumbnails, plots
    assert all(abs(a - b) <= 2 for a, b in zip(image.getpixel((5, 5)), HEADER_RGB))  # the CSS was applied


@pytest.fixture(scope="module")
def image_dom(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The imagefolder audit's folder and its report as Chromium renders it."""
    audit = image_audit(tmp_path_factory)
    dom = chromium(audit / REPORT_FILE, tmp_path_factory.mktemp("profile"), "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    return audit, dom.stdout


@pytest.fixture(scope="module")
def text_dom(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The Trainer text audit's report as Chromium renders it."""
    dom = chromium(text_audit(tmp_path_factory) / REPORT_FILE, tmp_path_factory.mktemp("profile"), "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    return dom.stdout


def test_rendered_report_names_classes_and_shows_files(image_dom: tuple[Path, str]) -> None:
    audit, dom = image_dom
    first = json.loads((audit / "mislabels.json").read_text())["ranking"][0]
    assert f"<td>{first['given_label_name']} ({first['given_label']})</td>" in dom
    tail = "/".join(Path(first["path"]).parts[-2:])
    assert re.search(f'<div class="path" title="{re.escape(first["path"])}">…/[^<]*{re.escape(tail)}</div>',
                     dom)  # the file under its picture, whole in the tooltip


def test_rendered_report_shows_texts(text_dom: str) -> None:
    assert "<dd>neg (0)</dd>" in text_dom or "<dd>pos (1)</dd>" in text_dom
    assert f'<div class="thumb text" title="{LONG_TEXT}">{shorten(LONG_TEXT, THUMB_CHARS)}</div>' in text_dom
    assert "input_ids" not in text_dom
