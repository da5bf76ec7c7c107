"""Everything a result has to say, written into an output folder: one call for the CLI and notebooks.

``write_reports(result, out)`` writes the result's own reports (see each ``reports/<command>.py``),
adds the command's entry to ``out/run.json`` and, with ``html=True``, renders ``out/report.html``;
:func:`terminal_view` is the table the CLI prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from rich.console import RenderableType

from influence_cli import distributed
from influence_cli.audits.check import CheckResult
from influence_cli.audits.mislabel import MislabelResult
from influence_cli.audits.target import TargetResult
from influence_cli.errors import InfluenceError
from influence_cli.files import atomic_write
from influence_cli.progress import TaskTiming
from influence_cli.reports import check, influence, mislabel, target
from influence_cli.reports.run_info import check_same_inputs, clear_reports, write_run_info
from influence_cli.scoring import InfluenceResult

Result = InfluenceResult | MislabelResult | TargetResult | CheckResult


@dataclass(frozen=True)
class _Kind:
    command: str
    write: Callable[[Any, Path], list[Path]]
    view: Callable[[Any], RenderableType]


_KINDS: dict[type, _Kind] = {
    InfluenceResult: _Kind("score", influence.write_influence_reports, influence.influence_table),
    MislabelResult: _Kind("mislabel-detect", mislabel.write_mislabel_reports, mislabel.suspects_table),
    TargetResult: _Kind("target-identify", target.write_target_reports, target.targets_table),
    CheckResult: _Kind("check", check.write_check_reports, check.text_report),
}


def _kind(result: Result) -> _Kind:
    try:
        return _KINDS[type(result)]
    except KeyError:
        raise InfluenceError(f"write_reports: cannot write a {type(result).__name__}; give the result of score, "
                             "mislabel_detect, target_identify or check") from None


def command_of(result: Result) -> str:
    """The CLI command that produces ``result`` (``score``, ``mislabel-detect``, ...)."""
    return _kind(result).command


def terminal_view(result: Result) -> RenderableType:
    """What the CLI prints for ``result``: a rich table."""
    return _kind(result).view(result)


def write_reports(result: Result, out: Path | str, *, html: bool = False, junit: Path | str | None = None,
                  seconds: float = 0.0, tasks: Sequence[TaskTiming] = (), overwrite: bool = False) -> list[Path]:
    """Write ``result``'s reports into ``out``, record the run in ``out/run.json`` and, with ``html``,
    render ``out/report.html``; a check result also writes JUnit XML to ``junit`` and appends its
    summary to ``$GITHUB_STEP_SUMMARY`` when that is set. Returns every path written.

    ``seconds`` and ``tasks`` (wall times per pass) are recorded in run.json. A folder whose run.json
    records another recipe or other data is refused unless ``overwrite``
    (:func:`~influence_cli.reports.run_info.check_same_inputs`); with it, that run's report files are
    removed, so results of two runs never mix.
    """
    out = Path(out)
    kind = _kind(result)
    session = result.session
    if session is None:
        raise InfluenceError("write_reports: this check result was built without a session (use `check(...)`)")
    if check_same_inputs(out, session.recipe, overwrite=overwrite, option="out"):
        clear_reports(out)  # another run's results: replaced, not mixed with these
    written = kind.write(result, out)
    if isinstance(result, CheckResult):
        if junit is not None:
            written.append(atomic_write(Path(junit), check.junit_xml(result)))
        summary = check.append_step_summary(result)
        written += [summary] if summary is not None else []
    written.append(write_run_info(out, kind.command, session.recipe, seconds=seconds,
                                  checkpoints=session.checkpoints, tasks=tasks))
    if html and distributed.is_main():  # the other ranks write no files (atomic_write skips them)
        from influence_cli.reports.html import (
            write_report,  # matplotlib: only when a page is asked for
        )

        written.append(write_report(out, session.recipe))  # the run's own recipe: trusted
    return written
