"""The report's plots, drawn with matplotlib (Agg, no display) and inlined as SVG ``data:`` URIs."""

from __future__ import annotations

import base64
import io
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402  (after choosing the backend)

FLAG = "#c0392b"
PLAIN = "#7f8c8d"
CURVE = "#2c6fbb"


def score_histogram(scores: Sequence[float], cut: float | None, xlabel: str) -> str:
    """Histogram of ``scores`` with the flag cut (scores ≥ cut are flagged) as a vertical line."""
    fig, ax = _figure()
    ax.hist(list(scores), bins=min(50, max(5, len(scores) // 10)), color=PLAIN)
    if cut is not None:
        ax.axvline(cut, color=FLAG, linestyle="--", label=f"flag cut {cut:.3g}")
        ax.legend(frameon=False)
    ax.set(xlabel=xlabel, ylabel="examples")
    ax.set_yscale("log")
    return _svg(fig)


def recall_curve(found: Sequence[int], n_positive: int, n_total: int, flagged: int | None) -> str:
    """Recall after inspecting the top k of the ranking, recall(k) = found(k) / n_positive, against
    the random-order baseline k / n_total; ``found[k-1]`` is found(k)."""
    fig, ax = _figure()
    ks = list(range(1, len(found) + 1))
    ax.plot(ks, [f / n_positive for f in found], color=CURVE, label="ranking")
    ax.plot([0, n_total], [0, 1], color=PLAIN, linestyle=":", label="random order")
    if flagged:
        ax.axvline(flagged, color=FLAG, linestyle="--", label=f"{flagged} flagged")
    ax.set(xlabel="examples inspected (top k)", ylabel="recall of flipped labels", ylim=(0, 1.02),
           xlim=(0, max(len(found), 1)))
    ax.legend(frameon=False, loc="lower right")
    return _svg(fig)


def anomaly_bars(scores: Sequence[float], flagged: Sequence[bool], labels: Sequence[str]) -> str:
    """One bar per candidate in rank order; flagged candidates in red."""
    fig, ax = _figure(width=max(6.0, min(14.0, 0.12 * len(scores))))
    ax.bar(range(len(scores)), list(scores), color=[FLAG if f else PLAIN for f in flagged])
    if len(scores) <= 40:
        ax.set_xticks(range(len(scores)), list(labels), rotation=90, fontsize=7)
    ax.set(xlabel="candidate test example (by rank)", ylabel="anomaly score")
    return _svg(fig)


def _figure(width: float = 6.0) -> tuple[Figure, object]:
    fig = Figure(figsize=(width, 3.2))
    ax = fig.add_subplot()
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def _svg(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
