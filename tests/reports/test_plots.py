"""The report's plots: SVG ``data:`` URIs whose drawn data are the values given (read back from the
figure before it is saved) and whose texts (labels, legend) are the documented ones."""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET

import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from influence_cli.reports import plots

PREFIX = "data:image/svg+xml;base64,"


def _svg(uri: str) -> str:
    """The SVG document inside a plot's data URI (it must parse as XML)."""
    assert uri.startswith(PREFIX)
    text = base64.b64decode(uri[len(PREFIX):], validate=True).decode("utf-8")
    assert ET.fromstring(text.encode()).tag == "{http://www.w3.org/2000/svg}svg"
    return text


def _texts(svg: str) -> list[str]:
    """The texts drawn: matplotlib writes each one as a comment before its glyphs."""
    return re.findall(r"<!-- (.*?) -->", svg)


def _width_pt(svg: str) -> float:
    return float(re.search(r'<svg[^>]* width="([\d.]+)pt"', svg).group(1))


@pytest.fixture
def figures(monkeypatch) -> list[Figure]:
    """Figures the plots draw, kept instead of being saved (the functions then return the figure)."""
    drawn: list[Figure] = []
    monkeypatch.setattr(plots, "_svg", lambda fig: drawn.append(fig) or fig)
    return drawn


def test_score_histogram_counts_every_score_and_marks_the_cut(figures):
    scores = [0.1 * i for i in range(120)]
    plots.score_histogram(scores, 7.5, "mislabel score")
    ax = figures[0].axes[0]
    bars = [p.get_height() for p in ax.patches]
    assert len(bars) == 12 and sum(bars) == 120  # min(50, max(5, N // 10)) bins
    assert [list(line.get_xdata()) for line in ax.lines] == [[7.5, 7.5]]
    assert to_hex(ax.lines[0].get_color()) == plots.FLAG
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_yscale()) == ("mislabel score", "examples", "log")

    plots.score_histogram([1.0, 2.0, 3.0], None, "x")  # few scores: 5 bins, no cut
    ax = figures[1].axes[0]
    assert len(ax.patches) == 5 and sum(p.get_height() for p in ax.patches) == 3 and not ax.lines
    assert ax.get_legend() is None


def test_score_histogram_uri_is_an_svg_with_its_texts():
    svg = _svg(plots.score_histogram([0.1, 0.2, 0.5, 0.9, 1.0] * 3, 0.5, "mislabel score"))
    texts = _texts(svg)
    assert "flag cut 0.5" in texts and "mislabel score" in texts and "examples" in texts
    assert _width_pt(svg) == 6.0 * 72
    assert "flag cut" not in " ".join(_texts(_svg(plots.score_histogram([0.1, 0.2], None, "s"))))


def test_recall_curve_is_found_over_positives_against_random_order(figures):
    plots.recall_curve([1, 1, 2, 3, 3], 4, 20, 2)
    ax = figures[0].axes[0]
    ranking, random_order, flag = ax.lines
    assert list(ranking.get_xdata()) == [1, 2, 3, 4, 5]
    assert list(ranking.get_ydata()) == [0.25, 0.25, 0.5, 0.75, 0.75]
    assert (list(random_order.get_xdata()), list(random_order.get_ydata())) == ([0, 20], [0, 1])
    assert list(flag.get_xdata()) == [2, 2] and to_hex(flag.get_color()) == plots.FLAG
    assert ax.get_ylim() == (0, 1.02) and ax.get_xlim() == (0, 5)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ranking", "random order", "2 flagged"]

    plots.recall_curve([], 1, 10, None)  # nothing ranked, nothing flagged
    ax = figures[1].axes[0]
    assert len(ax.lines) == 2 and ax.get_xlim() == (0, 1)


def test_recall_curve_uri_names_the_flagged():
    texts = _texts(_svg(plots.recall_curve([0, 1, 1], 1, 3, 2)))
    assert {"2 flagged", "ranking", "random order", "recall of flipped labels"} <= set(texts)


def test_anomaly_bars_are_the_scores_in_rank_order_with_the_flagged_in_red(figures):
    plots.anomaly_bars([6.0, 2.5, 0.5], [True, False, False], ["17", "3", "9"])
    ax = figures[0].axes[0]
    assert [p.get_height() for p in ax.patches] == [6.0, 2.5, 0.5]
    assert [to_hex(p.get_facecolor()) for p in ax.patches] == [plots.FLAG, plots.PLAIN, plots.PLAIN]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["17", "3", "9"]
    assert tuple(figures[0].get_size_inches()) == (6.0, 3.2)

    n = 100  # many candidates: a wider figure (0.12 in per bar, at most 14 in), no tick labels
    plots.anomaly_bars([1.0] * n, [False] * n, [str(i) for i in range(n)])
    assert tuple(figures[1].get_size_inches()) == pytest.approx((12.0, 3.2))
    assert "99" not in [t.get_text() for t in figures[1].axes[0].get_xticklabels()]


def test_anomaly_bars_uri_is_an_svg_as_wide_as_its_figure():
    svg = _svg(plots.anomaly_bars([1.0] * 200, [False] * 200, ["x"] * 200))
    assert _width_pt(svg) == 14.0 * 72
    assert "anomaly score" in _texts(svg)
