"""What ``influence-cli demo`` prints: what was planted, what each audit found of it, and where the files are.

Reports sit below the demo in the import layers, so this module reads a
:class:`~influence_cli.demo.DemoResult` through :class:`DemoFindings`, the part of it shown here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from rich.console import Group
from rich.text import Text

from influence_cli.audits.mislabel import MislabelResult
from influence_cli.audits.target import TargetResult
from influence_cli.reports.mislabel import suspects_table
from influence_cli.scoring import InfluenceResult

SUSPECT_ROWS = 10


class DemoFindings(Protocol):
    """The fields of :class:`~influence_cli.demo.DemoResult` that :func:`demo_summary` shows."""

    recipe: Path
    n_train: int
    flipped: list[int]
    poison: list[int]
    target: int | None
    mislabels: MislabelResult
    influence: InfluenceResult
    targets: TargetResult | None
    written: list[Path]

    @property
    def recall(self) -> dict[float, float]: ...
    @property
    def flagged(self) -> int: ...
    @property
    def flagged_flipped(self) -> int: ...
    @property
    def poison_in_top(self) -> int: ...
    @property
    def poison_in_suspects(self) -> int: ...
    @property
    def target_row(self) -> dict[str, Any] | None: ...
    @property
    def report(self) -> Path: ...


def _line(text: str) -> Text:
    """A line that is never wrapped (paths stay copyable)."""
    return Text(text, no_wrap=True, overflow="ignore")


def demo_summary(result: DemoFindings) -> Group:
    """The top suspected mislabels, the planted noise and the recall of the flips, the backdoor's
    findings (with one), test example's proponents and opponents, the recipe and every file written."""
    planted = (f"Planted: {len(result.flipped)} of {result.n_train} training labels flipped"
               + (f", plus {len(result.poison)} backdoor poison (mislabelled too, not counted as flips below)"
                  if result.poison else "")
               + f". Flagged automatically: {result.flagged} ({result.flagged_flipped} of them flipped).")
    recall = "Recall of the flipped labels when inspecting the top of the ranking: " + ", ".join(
        f"{f:.0%} inspected → {r:.0%}" for f, r in result.recall.items())
    hint = (f"Recipe to copy as a template: {result.recipe}\nTry: influence-cli mislabel-detect {result.recipe} --top 20"
            + (f"\n     influence-cli target-identify {result.recipe}" if result.poison else ""))
    return Group(suspects_table(result.mislabels, rows=SUSPECT_ROWS), Text(planted), Text(recall),
                 *(_backdoor_lines(result) if result.poison else []), *_influence_lines(result), _line(hint),
                 _line("wrote " + ", ".join(str(p) for p in result.written)),
                 _line(f"report {result.report.resolve().as_uri()}"))


def _backdoor_lines(result: DemoFindings) -> list[Text]:
    """Where the poison ranks for mislabel-detect, and whether target-identify found the target and its poison."""
    row, targets = result.target_row, result.targets
    assert row is not None and targets is not None
    poison = Text(f"Backdoor poison in the top 10% of the mislabel ranking: {result.poison_in_top} of "
                  f"{len(result.poison)} (a learned trigger makes its label fit).")
    if row["prediction"] == row["label"]:  # no triggered test image fooled the model: nothing to find
        return [poison, Text(f"The backdoor did not take at this size: the model predicts the triggered test example "
                             f"{result.target} as its true class {row['label']}, so it is not an attack target "
                             f"(target-identify flagged {int(targets.flagged.sum())} candidates). Train longer or "
                             "on more examples (the defaults do) to see one found.")]
    return [poison,
            Text(f"target-identify ({targets.method}): the triggered test example {result.target} ranks "
                 f"#{row['rank']} of {len(targets.test_indices)} candidates (anomaly "
                 f"{row['anomaly_score']:.1f}, {'flagged' if row['flagged'] else 'NOT flagged'}; "
                 f"{int(targets.flagged.sum())} flagged in all); {result.poison_in_suspects} of its "
                 f"{len(row['suspects'])} suspects are among the {len(result.poison)} poison.")]


def _influence_lines(result: DemoFindings) -> list[Text]:
    """The explained test example and its top proponents and opponents, flips marked."""
    flipped = set(result.flipped)
    test = result.influence.to_dict()["test"][0]
    lines = [Text(f"Test example {test['test_index']} (label {test['label']}, predicted {test['prediction']}), "
                  f"{result.influence.method} influence:")]
    for side in ("proponents", "opponents"):
        entries = ", ".join(f"#{e['train_index']} (label {e['label']}"
                            f"{', flipped' if e['train_index'] in flipped else ''}, {e['score']:.3g})"
                            for e in test[side])
        lines.append(Text(f"  top {side}: {entries}"))
    return lines
