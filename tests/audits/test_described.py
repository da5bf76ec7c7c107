"""Every result names what its examples are (issue 15): class names beside the label ids, the file
of an imagefolder example, the text of a text example, in ``to_dict`` (the JSON reports), in
check offenders and in baseline entries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures.audit_runs import image_run, text_run
from fixtures.hf_runs import LONG_TEXT, LONG_TEXT_ROW
from fixtures.image_runs import CLASSES, MISFILED
from influence_cli import Session, load_recipe, mislabel_detect, score, target_identify
from influence_cli.audits.baseline import TEXT_CHARS, Baseline, example_ids
from influence_cli.audits.check import Facts, MaxFlaggedMislabelPerClass, NoAttackTarget, evaluate
from influence_cli.recipe import NoAttackTargetRule


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Session:
    return Session.from_recipe(load_recipe(image_run(tmp_path_factory)), need_test=True)


def _named_by_folder(entry: dict, key: str) -> None:
    """An imagefolder example's label is its class folder: the name beside the id says so."""
    assert entry[f"{key}_name"] == CLASSES[entry[key]] == Path(entry["path"]).parent.name


def test_score_names_labels_and_files(images: Session) -> None:
    data = score(images, test_indices=[0, 3], k=2).to_dict()
    for t in data["test"]:
        _named_by_folder(t, "label")
        assert t["prediction_name"] == CLASSES[t["prediction"]] and t["loss_label_name"] == t["label_name"]
        assert Path(t["path"]).parent.parent.name == "test"
        for e in t["proponents"] + t["opponents"]:
            _named_by_folder(e, "label")
            assert list(e)[:4] == ["train_index", "score", "label", "label_name"]  # the name beside its id


def test_mislabel_ranking_names_given_and_suggested_labels(images: Session) -> None:
    data = mislabel_detect(images).to_dict()
    misfiled = {str(Path(to) / new) for to, new in MISFILED.values()}
    assert {str(Path(*Path(e["path"]).parts[-2:])) for e in data["ranking"][:2]} == misfiled  # the planted ones
    for e in data["ranking"]:
        _named_by_folder(e, "given_label")
        assert e["suggested_label_name"] == CLASSES[e["suggested_label"]]


@pytest.fixture(scope="module")
def targets(images: Session) -> dict:
    """Every candidate flagged (thresholds near 0), so that each lists its suspects."""
    return target_identify(images, k=3, threshold=1e-9, share_threshold=1e-9, misclassified_only=False).to_dict()


def test_targets_name_candidates_and_suspects(targets: dict) -> None:
    for t in targets["test"]:
        _named_by_folder(t, "label")
        assert t["prediction_name"] == CLASSES[t["prediction"]]
        for s in t["suspects"]:
            _named_by_folder(s, "label")


def test_check_offenders_carry_names_and_files(images: Session, targets: dict) -> None:
    mislabels = mislabel_detect(images).to_dict()
    flagged = [e["train_index"] for e in mislabels["ranking"] if e["flagged"]]
    facts = Facts(len(images.train), mislabels, targets, example_ids(images.train, flagged))
    rules = [MaxFlaggedMislabelPerClass(0), NoAttackTarget(NoAttackTargetRule())]
    per_class, attack = evaluate({}, facts, rules, None).outcomes
    for y, name in enumerate(CLASSES):  # the per-class rule names each class it counts
        count = sum(e["flagged"] and e["given_label"] == y for e in mislabels["ranking"])
        assert (f"label {name} ({y}): {count} flagged > 0" in per_class.detail) == (count > 0)
    for o in per_class.offenders:
        _named_by_folder(o, "given_label")
        assert {"id", "suggested_label_name", "score"} <= set(o)
    by_index = {t["test_index"]: t for t in targets["test"]}
    assert len(attack.offenders) == sum(t["flagged"] for t in targets["test"])
    for o in attack.offenders:
        _named_by_folder(o, "label")
        assert o["path"] == by_index[o["test_index"]]["path"] and o["prediction_name"] == CLASSES[o["prediction"]]
        assert o["suspects"] and all(Path(s["path"]).parent.name == s["label_name"] for s in o["suspects"])


def test_baseline_entries_say_what_was_accepted(tmp_path: Path) -> None:
    flagged = [{"id": "00000000000000b2", "given_label": 1, "given_label_name": "pos", "text": LONG_TEXT},
               {"id": "00000000000000a1", "given_label": 0, "given_label_name": "cat", "path": "/d/cat/1.png"},
               {"id": "00000000000000c3", "given_label": 2}]
    path = Baseline.of(flagged, "combined").save(tmp_path / "baseline.json")
    entries = json.loads(path.read_text())["entries"]
    assert entries == [  # sorted by id, as before
        {"id": "00000000000000a1", "label": 0, "label_name": "cat", "path": "/d/cat/1.png"},
        {"id": "00000000000000b2", "label": 1, "label_name": "pos", "text": LONG_TEXT[:TEXT_CHARS - 1] + "…"},
        {"id": "00000000000000c3", "label": 2}]
    assert len(entries[1]["text"]) == TEXT_CHARS and Baseline.load(path).ids == {e["id"] for e in flagged}


def test_a_baseline_without_human_fields_still_loads(tmp_path: Path) -> None:
    old = {"format": "influence-cli-baseline", "version": 1, "id": "sha256(inputs, label)[:16]", "method": "combined",
           "entries": [{"id": "0b3f9c1e2d4a5b6c", "label": 3}]}
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert Baseline.load(tmp_path / "old.json").entries == {"0b3f9c1e2d4a5b6c": {"id": "0b3f9c1e2d4a5b6c", "label": 3}}


@pytest.fixture(scope="module")
def text_recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return text_run(tmp_path_factory)


def test_a_trainer_text_run_shows_texts_and_label_names(text_recipe: Path) -> None:
    recipe = text_recipe
    rows = [json.loads(line) for line in (recipe.parent / "train.jsonl").read_text().splitlines()]
    session = Session.from_recipe(load_recipe(recipe), need_test=True)
    for e in mislabel_detect(session).to_dict()["ranking"]:
        row = rows[e["train_index"]]
        assert e["given_label_name"] == row["label"] and e["text"] == row["text"]  # the jsonl's own label and text
        assert e["suggested_label_name"] == ["neg", "pos"][e["suggested_label"]]
    test = score(session, test_indices=[0], k=len(rows) // 2).to_dict()["test"][0]  # every row on one side
    assert test["label_name"] in ("neg", "pos") and "input_ids" not in json.dumps(test)
    assert next(e["text"] for e in test["proponents"] + test["opponents"]
                if e["train_index"] == LONG_TEXT_ROW) == LONG_TEXT  # under 200 characters: whole
