"""``report.html``: one self-contained page a person reads to judge the data.

:func:`write_report` reads what the commands wrote into an output folder DIR and renders
``DIR/report.html``; each section appears when its file exists:

- ``influence.json`` (``score``): per test example its input, label and prediction, and its top
  proponents and opponents as a gallery with scores and labels;
- ``mislabels.json`` (``mislabel-detect``): the top suspects with given vs suggested label, a
  histogram of the scores with the flag cut, and, when ``ground_truth.json`` lists
  ``flipped_train_indices``, the recall curve and recall@k / average precision;
- ``targets.json`` (``target-identify``): every candidate's anomaly score (flagged ones in red)
  and each flagged target beside its suspects;
- ``check.json`` (``check``): the verdict, every rule with its value and limit, and the newly
  flagged examples;
- ``run.json`` (every command): the recipe, checkpoints with learning rates η_c, timings.

The files are checked first (:mod:`influence_cli.reports.sources`). Inputs are re-read through a
recipe the user trusts, or the recorded one when that runs no code, and drawn by
:mod:`influence_cli.reports.thumbnails`; plots come from :mod:`influence_cli.reports.plots`.
Everything is inlined (``data:`` URIs, inline CSS, no script), so the file works offline.

Everything taken from the files, the data or paths is escaped; markup is only built here, as
:class:`Markup`. A Content-Security-Policy allows nothing but the page's own style sheet and
``data:`` images, so no script runs even if some text slipped through.
"""

from __future__ import annotations

import math
import warnings
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from influence_cli.files import atomic_write
from influence_cli.loading.examples import described, label_text, shorten, shortened
from influence_cli.recipe import Recipe
from influence_cli.reports import plots
from influence_cli.reports.entries import method_note
from influence_cli.reports.sources import read_sources
from influence_cli.reports.style import CSP, CSS
from influence_cli.reports.thumbnails import ReportInputs, Thumbnail

REPORT_FILE = "report.html"
MAX_TESTS = 50        # test examples shown in the influence section
MAX_SUSPECTS = 50     # rows of the mislabel table
MAX_CANDIDATES = 200  # rows of the target candidates table
MAX_TARGETS = 20      # flagged targets shown beside their suspects
MAX_NEIGHBOURS = 10   # proponents / opponents / suspects shown per example
THUMB_CHARS = 120     # of a text shown as an example's input (the whole text is its tooltip)
PATH_CHARS = 32       # of a file path shown under its picture (the whole path is its tooltip)


def write_report(out: Path, recipe: Recipe | None = None) -> Path:
    """Render ``out/report.html`` from the reports in ``out``; returns its path. ``recipe`` (trusted:
    the user's own) re-reads the inputs; without it, the recipe recorded in ``out`` does when that
    runs no code."""
    return atomic_write(out / REPORT_FILE, render_report(out, recipe))


def render_report(out: Path, recipe: Recipe | None = None) -> str:
    """The report page as a string (see the module docstring for what it shows); when inputs
    cannot be shown, the page and one warning say why."""
    sources = read_sources(out)
    docs, run, truth = sources.docs, sources.run, sources.truth
    inputs = ReportInputs.load(out, run, docs, recipe)
    inputs.fetch(_wanted(docs))
    if inputs.note:
        warnings.warn(inputs.note, stacklevel=2)
    sections = [("overview", "Overview", _overview(docs, inputs, out))]
    if "checks" in docs:
        sections.append(("checks", "Checks", _checks(docs["checks"], inputs)))
    if "influence" in docs:
        sections.append(("influence", "Influence", _influence(docs["influence"], inputs)))
    if "mislabels" in docs:
        sections.append(("mislabels", "Mislabels", _mislabels(docs["mislabels"], inputs, truth)))
    if "targets" in docs:
        sections.append(("targets", "Targets", _targets(docs["targets"], inputs, truth)))
    sections.append(("run", "Run", _run(run, docs)))
    return _page(out, sections)


def _wanted(docs: dict[str, dict[str, Any]]) -> dict[str, set[int]]:
    """The train and test indices the page shows (thumbnails are drawn for these only)."""
    train: set[int] = set()
    test: set[int] = set()
    for t in docs.get("influence", {}).get("test", [])[:MAX_TESTS]:
        test.add(t["test_index"])
        train.update(e["train_index"] for side in ("proponents", "opponents") for e in t[side][:MAX_NEIGHBOURS])
    train.update(e["train_index"] for e in _ranking(docs.get("mislabels", {}))[:MAX_SUSPECTS])
    train.update(e["train_index"] for e in docs.get("checks", {}).get("new_flagged", [])[:MAX_SUSPECTS])
    for t in _flagged_targets(docs.get("targets", {}))[:MAX_TARGETS]:
        test.add(t["test_index"])
        train.update(s["train_index"] for s in t.get("suspects", [])[:MAX_NEIGHBOURS])
    return {"train": train, "test": test}


# --- sections -------------------------------------------------------------------------------

def _overview(docs: dict[str, dict[str, Any]], inputs: ReportInputs, out: Path) -> str:
    rows = []
    if inputs.train is not None:
        rows.append(("training examples", len(inputs.train)))
    if inputs.test is not None:
        rows.append(("test examples", len(inputs.test)))
    if "checks" in docs:
        rules = docs["checks"].get("rules", [])
        rows.append(("checks", f"{'passed' if docs['checks'].get('passed') else 'FAILED'}: "
                               f"{sum(bool(r.get('passed')) for r in rules)} of {len(rules)} rules pass"))
    if "influence" in docs:
        d = docs["influence"]
        rows.append((f"influence ({d.get('method', '?')})", f"{len(d.get('test', []))} test example(s) explained"))
    if "mislabels" in docs:
        r = _ranking(docs["mislabels"])
        rows.append((f"mislabels ({docs['mislabels'].get('method', '?')})",
                     f"{sum(bool(e.get('flagged')) for e in r)} flagged of {len(r)} ranked"))
    if "targets" in docs:
        t = docs["targets"].get("test", [])
        rows.append((f"targets ({docs['targets'].get('method', '?')})",
                     f"{len(_flagged_targets(docs['targets']))} flagged of {len(t)} candidates"))
    note = f'<p class="note">{escape(inputs.note)}</p>' if inputs.note else ""
    return _kv(rows) + note + f'<p class="muted">folder: {escape(str(out.resolve()))}</p>'


def _checks(doc: dict[str, Any], inputs: ReportInputs) -> str:
    verdict = ('<p class="verdict pass">all checks pass</p>' if doc.get("passed")
               else '<p class="verdict fail">a check fails</p>')
    rules = _table(["rule", "passed", "value", "limit", "detail"],
                   [("rule" if r.get("passed") else "rule flagged",
                     [r.get("rule"), "yes" if r.get("passed") else _alert("no"), r.get("value"),
                      r.get("limit"), r.get("detail")]) for r in doc.get("rules", [])])
    new = doc.get("new_flagged", [])
    rows = [("", [_thumb(inputs, "train", e["train_index"], e), e["train_index"], label_text(e, "given_label"),
                  label_text(e, "suggested_label"), e.get("suggested_prob"), e.get("score")])
            for e in new[:MAX_SUSPECTS]]
    table = (f"<h3>Newly flagged ({len(new)})</h3>" + _table(
        ["input", "train index", "given", "suggested", "p(suggested)", "score"], rows)) if new else ""
    return verdict + rules + table


def _influence(doc: dict[str, Any], inputs: ReportInputs) -> str:
    tests = doc.get("test", [])
    parts = [f'<p>Method <b>{_h(doc.get("method"))}</b>{_h(method_note(doc))}. Proponents (largest scores) lowered the test '
             'loss when trained on; opponents (smallest scores) raised it.</p>']
    for t in tests[:MAX_TESTS]:
        i = t["test_index"]
        head = (f'<div class="subject">{_thumb(inputs, "test", i, t)}<div><h3>test example {_h(i)}</h3>'
                + _kv([("label", label_text(t, "label")), ("prediction", label_text(t, "prediction")),
                       ("loss taken at", label_text(t, "loss_label"))]) + "</div></div>")
        galleries = "".join(f'<div><h4>{side}</h4>{_gallery(t.get(side, []), inputs)}</div>'
                            for side in ("proponents", "opponents"))
        parts.append(f'<article class="test" id="test-{_h(i)}">{head}<div class="sides">{galleries}</div></article>')
    if len(tests) > MAX_TESTS:
        parts.append(f'<p class="muted">… and {len(tests) - MAX_TESTS} more test examples in influence.json</p>')
    return "".join(parts)


def _mislabels(doc: dict[str, Any], inputs: ReportInputs, truth: dict[str, Any]) -> str:
    ranking = _ranking(doc)
    flagged = [e for e in ranking if e.get("flagged")]
    extra = [(k, v) for k, v in doc.items() if k not in ("n_train", "n_flagged") and _is_scalar(v)]
    rule = doc.get("flag_rule")
    extra += [("flag rule", rule["description"])] if isinstance(rule, dict) and "description" in rule else []
    parts = [_kv([("ranked", len(ranking)), ("flagged", len(flagged)), *extra])]
    scores = [e["score"] for e in ranking if _finite(e.get("score"))]
    if scores:
        lowest = rule.get("lowest_flagged_score") if isinstance(rule, dict) else None
        cut = lowest if _finite(lowest) else (min(e["score"] for e in flagged) if flagged else None)
        parts.append(_plot(plots.score_histogram(scores, cut, "mislabel score"), "histogram of mislabel scores"))
    flipped = {int(i) for i in truth.get("flipped_train_indices", [])}
    if flipped:
        n_total = len(inputs.train) if inputs.train is not None else len(ranking)
        parts.append(_recall(ranking, flipped, n_total, len(flagged)))
    header = ["rank", "input", "train index", "given", "suggested", "p(suggested)", "score", "flagged"]
    header += ["flipped (truth)"] if flipped else []
    rows = []
    for e in ranking[:MAX_SUSPECTS]:
        cells = [e.get("rank"), _thumb(inputs, "train", e["train_index"], e), e["train_index"],
                 label_text(e, "given_label"), label_text(e, "suggested_label"), e.get("suggested_prob"),
                 e.get("score"), _yes(e.get("flagged"))]
        cells += [_yes(e["train_index"] in flipped)] if flipped else []
        rows.append(("suspect flagged" if e.get("flagged") else "suspect", cells))
    parts.append(f"<h3>Top {len(rows)} suspects</h3>" + _table(header, rows))
    return "".join(parts)


def _recall(ranking: Sequence[dict[str, Any]], flipped: set[int], n_total: int, n_flagged: int) -> str:
    """Recall curve and recall@k: with P flipped labels, found(k) of them in the top k,
    recall@k = found(k) / P (k = round(fraction · N), as the demo prints) and average precision
    AP = (1/P) Σ_{k: top-k's k-th is flipped} found(k)/k."""
    found, hits, ap = [], 0, 0.0
    for k, e in enumerate(ranking, start=1):
        if e["train_index"] in flipped:
            hits += 1
            ap += hits / k
        found.append(hits)
    p = len(flipped)
    rows: list[tuple[str, Any]] = [("flipped labels (ground truth)", p)]
    for frac in (0.05, 0.1, 0.2):
        k = min(len(found), max(1, round(frac * n_total)))
        if k:
            rows.append((f"recall in top {frac:.0%} ({k})", f"{found[k - 1] / p:.3f}"))
    if n_flagged:
        rows.append(("precision / recall of the flagged",
                     f"{found[n_flagged - 1] / n_flagged:.3f} / {found[n_flagged - 1] / p:.3f}"))
    rows.append(("average precision", f"{ap / p:.3f}"))
    return ('<h3>Recall against ground truth</h3><div class="row">'
            + _plot(plots.recall_curve(found, p, n_total, n_flagged), "recall curve") + _kv(rows) + "</div>")


def _targets(doc: dict[str, Any], inputs: ReportInputs, truth: dict[str, Any]) -> str:
    cands = sorted(doc.get("test", []), key=lambda t: t.get("rank", math.inf))
    flagged = _flagged_targets(doc)
    real = {int(i) for i in truth.get("target_test_indices", [])}
    poison = {int(i) for i in truth.get("poison_train_indices", [])}
    extra = [(k, v) for k, v in doc.items() if not k.startswith("n_") and _is_scalar(v)]
    parts = [_kv([("candidates", len(cands)), ("flagged", len(flagged)), *extra])]
    if cands:
        parts.append(_plot(plots.anomaly_bars([t.get("anomaly_score", 0.0) for t in cands],
                                              [bool(t.get("flagged")) for t in cands],
                                              [str(t["test_index"]) for t in cands]), "anomaly scores"))
    for t in flagged[:MAX_TARGETS]:
        i = t["test_index"]
        suspects = t.get("suspects", [])
        planted = ([("suspects that are planted poison (truth)",
                     f"{sum(s['train_index'] in poison for s in suspects)} of {len(suspects)} "
                     f"({len(poison)} planted)")] if poison else [])
        head = (f'<div class="subject">{_thumb(inputs, "test", i, t)}<div><h3>flagged target: test example {_h(i)}'
                "</h3>" + _kv([("anomaly score", t.get("anomaly_score")), ("rank", t.get("rank")),
                               ("label", label_text(t, "label")), ("prediction", label_text(t, "prediction")),
                               *planted]) + "</div></div>")
        parts.append(f'<article class="target" id="target-{_h(i)}">{head}<h4>suspects</h4>'
                     f'{_gallery(suspects, inputs)}</article>')
    inputs_shown = any(described(t) for t in cands[:MAX_CANDIDATES])
    header = (["rank", "test index", "anomaly score", "label", "prediction", "flagged"]
              + (["input"] if inputs_shown else []) + (["target (truth)"] if real else []))
    rows = [("candidate flagged" if t.get("flagged") else "candidate",
             [t.get("rank"), t["test_index"], t.get("anomaly_score"), label_text(t, "label"),
              label_text(t, "prediction"), _yes(t.get("flagged"))]
             + ([_described(t)] if inputs_shown else []) + ([_yes(t["test_index"] in real)] if real else []))
            for t in cands[:MAX_CANDIDATES]]
    parts.append("<h3>All candidates</h3>" + _table(header, rows))
    return "".join(parts)


def _run(run: dict[str, Any], docs: dict[str, dict[str, Any]]) -> str:
    first = next(iter(docs.values()))
    recipe = run.get("recipe") or first.get("recipe") or {}
    checkpoints = run.get("checkpoints") or next((d["checkpoints"] for d in docs.values() if d.get("checkpoints")), [])
    parts = [_kv([("influence-cli", run.get("version", "?")), ("recipe file", run.get("recipe_path") or "?")])]
    measured = next((d["checkpoints"] for d in docs.values()
                     if any("fit" in e for e in d.get("checkpoints") or [])), None)  # checkpoint_fit's fields
    if checkpoints:
        pct = lambda v: "" if v is None else f"{v:.0%}"  # noqa: E731
        fit = [(pct(m.get("fit")), pct(m.get("share")), "under-trained" if m.get("under_trained") else "")
               for m in measured] if measured and len(measured) == len(checkpoints) else None
        parts.append("<h3>Checkpoints</h3>" + _table(
            ["#", "path", "learning rate η_c", "sha256", *(["training labels fit", "share of the sum", ""] if fit
                                                          else [])],
            [("", [c, e.get("path"), e.get("learning_rate"), str(e.get("sha256", ""))[:12], *(fit[c] if fit else [])])
             for c, e in enumerate(checkpoints)]))
    commands = run.get("commands", {})
    if commands:
        rows = []
        for name, c in commands.items():
            tasks = "; ".join(f'{t["task"]}: {t["total"]} in {t["seconds"]:.2f} s' for t in c.get("tasks", []))
            rows.append(("", [name, c.get("finished"), f'{c.get("seconds", 0):.2f} s', tasks]))
        parts.append("<h3>Timings</h3>" + _table(["command", "finished (UTC)", "wall time", "passes"], rows))
    parts.append("<h3>Recipe</h3><pre>" + escape(yaml.safe_dump(recipe, sort_keys=False)) + "</pre>")
    return "".join(parts)


# --- small HTML pieces -------------------------------------------------------------------------

class Markup(str):
    """A fragment of HTML built by this module from its own templates; any other string is text and
    gets escaped where it is placed."""


def _thumb(inputs: ReportInputs, split: str, index: int, entry: dict[str, Any] | None = None) -> Markup:
    """The example's picture with its file under it, or its text (shortened; the whole text is the
    tooltip), or a placeholder when neither the data nor the report ``entry`` shows it."""
    t = inputs.thumbs[split].get(index) or Thumbnail()
    found = described(entry or {})
    path = found[1] if found is not None and found[0] == "path" else None
    text = t.text if t.text is not None else (found[1] if found is not None and path is None else None)
    if t.image is not None:
        body = f'<img class="thumb" src="{escape(t.image)}" alt="{split} example {index}">'
    elif text is not None:
        body = f'<div class="thumb text" title="{escape(text)}">{escape(shorten(text, THUMB_CHARS))}</div>'
    else:
        body = '<div class="thumb none">no input</div>'
    if path is not None:  # the file under its picture
        body = f'<div class="input">{body}{_described({"path": path}, PATH_CHARS, "path")}</div>'
    return Markup(body)


def _described(entry: dict[str, Any], chars: int = THUMB_CHARS, cls: str = "described") -> Markup:
    """The entry's text or file path, shortened, with all of it as the tooltip (empty without one)."""
    found = described(entry)
    if found is None:
        return Markup("")
    return Markup(f'<div class="{cls}" title="{escape(found[1])}">{escape(shortened(entry, chars) or "")}</div>')


def _gallery(entries: Sequence[dict[str, Any]], inputs: ReportInputs) -> str:
    if not entries:
        return '<p class="muted">none</p>'
    items = [f'<figure class="example">{_thumb(inputs, "train", e["train_index"], e)}<figcaption>'
             f'#{_h(e["train_index"])} · label {_h(label_text(e, "label"))}<br>score {_h(e.get("score"))}'
             "</figcaption></figure>" for e in entries[:MAX_NEIGHBOURS]]
    return '<div class="gallery">' + "".join(items) + "</div>"


def _table(header: Sequence[str], rows: Iterable[tuple[str, Sequence[Any]]]) -> str:
    """Rows are (css class, cells); a cell is escaped unless it is :class:`Markup` (a thumbnail, an alert)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(f'<tr class="{cls}">' + "".join(f"<td>{_cell(c)}</td>" for c in cells) + "</tr>"
                   if cls else "<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in cells) + "</tr>"
                   for cls, cells in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _kv(rows: Sequence[tuple[str, Any]]) -> str:
    return '<dl class="kv">' + "".join(f"<dt>{_h(k)}</dt><dd>{_h(v)}</dd>" for k, v in rows) + "</dl>"


def _plot(uri: str, alt: str) -> str:
    return f'<figure class="plot"><img src="{uri}" alt="{escape(alt)}"></figure>'


def _cell(value: Any) -> str:
    return value if isinstance(value, Markup) else _h(value)


def _h(value: Any) -> str:
    """``value`` as text in HTML: formatted, then escaped (for anything from the files, the data or paths)."""
    return escape(_fmt(value))


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _yes(value: Any) -> str:
    return _alert("yes") if value else "no"


def _alert(text: str) -> Markup:
    return Markup(f'<span class="alert">{escape(text)}</span>')


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _ranking(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(doc.get("ranking", []), key=lambda e: e.get("rank", math.inf))


def _flagged_targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted((t for t in doc.get("test", []) if t.get("flagged")), key=lambda t: t.get("rank", math.inf))


def _page(out: Path, sections: Sequence[tuple[str, str, str]]) -> str:
    nav = "".join(f'<a href="#{sid}">{escape(title)}</a>' for sid, title, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{escape(title)}</h2>{content}</section>'
                   for sid, title, content in sections)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>influence-cli report: {escape(out.resolve().name)}</title><style>{CSS}</style></head>"
            f'<body><header><h1>influence-cli report</h1><p class="muted">{when}</p><nav>{nav}</nav></header>'
            f"<main>{body}</main></body></html>\n")


