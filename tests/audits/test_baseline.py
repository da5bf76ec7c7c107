"""The check baseline: stable content ids and the committed JSON file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from influence_cli.audits.baseline import Baseline, example_id, example_ids
from influence_cli.errors import DataError
from influence_cli.loading.examples import Examples, TensorExamples


def _examples(n: int = 12, seed: int = 0) -> TensorExamples:
    gen = torch.Generator().manual_seed(seed)
    return TensorExamples(torch.randn(n, 5, generator=gen), torch.randint(0, 3, (n,), generator=gen))


def test_ids_follow_content_not_position() -> None:
    ex = _examples()
    ids = example_ids(ex, range(len(ex)))
    perm = torch.randperm(len(ex), generator=torch.Generator().manual_seed(1))
    shuffled = TensorExamples(ex.inputs[perm], ex.labels[perm])  # type: ignore[index]
    moved = example_ids(shuffled, range(len(ex)))
    assert [moved[j] for j in range(len(ex))] == [ids[int(i)] for i in perm]
    appended = TensorExamples(torch.cat([ex.inputs, torch.randn(3, 5)]), torch.cat([ex.labels, ex.labels[:3]]))
    assert example_ids(appended, range(len(ex))) == ids
    assert len(set(ids.values())) == len(ex)


def test_id_changes_with_label_input_dtype_and_shape() -> None:
    x = torch.arange(6, dtype=torch.float32)
    base = example_id(x, 1)
    assert base == example_id(x.clone(), 1) and len(base) == 16
    assert example_id(x, 2) != base
    assert example_id(x + 1e-6 * (torch.arange(6) == 3), 1) != base
    assert example_id(x.double(), 1) != base
    assert example_id(x.reshape(2, 3), 1) != base
    # a class index stored as a float tensor gets the same id as an integer label
    ex_int = TensorExamples(x[None], torch.tensor([1]))
    ex_float = TensorExamples(x[None], torch.tensor([1.0]))
    assert example_ids(ex_int, [0]) == example_ids(ex_float, [0]) == {0: base}


def test_dict_inputs_hash_every_tensor_in_key_order() -> None:
    ids, mask = torch.tensor([3, 4, 0]), torch.tensor([1, 1, 0])
    a = example_id({"input_ids": ids, "attention_mask": mask}, 0)
    assert a == example_id({"attention_mask": mask, "input_ids": ids}, 0)
    assert a != example_id({"input_ids": ids, "attention_mask": torch.tensor([1, 1, 1])}, 0)


class _PaddedPerBatch(Examples):
    """Token sequences padded to the longest in each fetched batch (like tokenised text data)."""

    def __init__(self, seqs: list[list[int]]) -> None:
        self.seqs, self.name = seqs, "text"

    def __len__(self) -> int:
        return len(self.seqs)

    def _fetch(self, idx: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        width = max(len(self.seqs[i]) for i in idx.tolist())
        ids = torch.tensor([self.seqs[i] + [0] * (width - len(self.seqs[i])) for i in idx.tolist()])
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}, idx % 2


def test_ids_of_dynamically_padded_inputs_do_not_depend_on_neighbours() -> None:
    text = _PaddedPerBatch([[5, 6], [7, 8, 9, 3, 4], [5, 6, 2]])
    assert example_ids(text, [0]) == {0: example_ids(text, [0, 1, 2])[0]} == {0: example_ids(text, [1, 0])[0]}
    assert len(set(example_ids(text, range(3)).values())) == 3


def test_save_is_sorted_and_round_trips(tmp_path: Path) -> None:
    flagged = [{"id": "ffff000011112222", "given_label": 2}, {"id": "0000aaaabbbbcccc", "given_label": 0}]
    path = Baseline.of(flagged, "combined").save(tmp_path / "b.json")
    data = json.loads(path.read_text())
    assert data["format"] == "influence-cli-baseline" and data["version"] == 1 and data["method"] == "combined"
    assert [e["id"] for e in data["entries"]] == ["0000aaaabbbbcccc", "ffff000011112222"]
    loaded = Baseline.load(path)
    assert loaded.ids == {"0000aaaabbbbcccc", "ffff000011112222"}
    assert loaded.entries["ffff000011112222"]["label"] == 2
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.parametrize("content, words", [
    (None, "baseline file not found"),
    ("{not json", "cannot read the baseline"),
    ('{"entries": []}', "not an influence-cli baseline"),
    ('{"format": "influence-cli-baseline", "version": 9, "entries": []}', "version 9"),
    ('{"format": "influence-cli-baseline", "version": 1, "entries": [{"label": 1}]}', '"entries" must be'),
    # an id lands in check.md inside backticks: only what example_id makes is accepted
    ('{"format": "influence-cli-baseline", "version": 1, "entries": [{"id": "`<script>x`", "label": 1}]}',
     "id is 16 hexadecimal digits"),
])
def test_bad_baseline_files_are_one_line_errors(tmp_path: Path, content: str | None, words: str) -> None:
    path = tmp_path / "b.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError) as err:
        Baseline.load(path)
    assert words in err.value.message and str(path) in err.value.message and "\n" not in err.value.message


def test_a_folder_is_not_a_baseline(tmp_path: Path) -> None:
    folder = tmp_path / "b"
    folder.mkdir()
    with pytest.raises(DataError, match=r"/b: the baseline must be a file, not a folder$"):
        Baseline.load(folder)


def test_paths_are_stored_relative_to_the_recipe_folder(tmp_path: Path) -> None:
    """A committed baseline is the same file on every machine: image paths below the recipe's folder
    are relative (with '/'), others stay as they are."""
    inside = {"id": "0" * 16, "given_label": 1, "path": str(tmp_path / "data" / "train" / "cat" / "012.png")}
    outside = {"id": "1" * 16, "given_label": 2, "path": "/elsewhere/dog/7.png"}
    entries = Baseline.of([inside, outside], "loss", base_dir=tmp_path).to_dict()["entries"]
    assert [e["path"] for e in entries] == ["data/train/cat/012.png", "/elsewhere/dog/7.png"]
