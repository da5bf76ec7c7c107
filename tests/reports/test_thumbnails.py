"""Thumbnails: image-like inputs min–max scaled into PNG ``data:`` URIs with the right pixels, other
inputs as short texts, and the report's inputs re-read only when that runs no code."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from conftest import TinyRun
from influence_cli.loading.examples import Examples, TensorExamples
from influence_cli.recipe import load_recipe
from influence_cli.reports.thumbnails import ReportInputs, Thumbnail, as_image, png_data_uri, thumbnail, thumbnails

PNG = "data:image/png;base64,"
PIXEL_ATOL = 2 / 255  # grey goes through matplotlib's 256-entry colour map, then 8 bits


def _pixels(uri: str) -> np.ndarray:
    """The RGBA pixels (floats in [0, 1]) of a PNG data URI."""
    assert uri.startswith(PNG)
    data = base64.b64decode(uri[len(PNG):], validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(io.BytesIO(data), format="png")


@pytest.mark.parametrize("x, want", [
    (torch.tensor([[2.0, 4.0], [6.0, 10.0]]), [[0.0, 0.25], [0.5, 1.0]]),                        # H×W
    (torch.tensor([[[-1.0, 0.0, 1.0], [3.0, 1.0, -1.0]]]), [[0.0, 0.25, 0.5], [1.0, 0.5, 0.0]]),  # 1×H×W
    (torch.tensor([[0, 51], [102, 255]], dtype=torch.uint8), [[0.0, 0.2], [0.4, 1.0]]),          # uint8
    (torch.full((3, 3), 7.0), [[0.5] * 3] * 3),                                                  # constant
    (torch.tensor([[0.0, float("inf")], [1.0, 2.0]]), [[0.5, 0.5], [0.5, 0.5]]),                 # no finite range
])
def test_as_image_scales_each_image_to_0_1(x, want):
    picture = as_image(x)
    assert picture.dtype == np.float64
    np.testing.assert_allclose(picture, np.array(want), rtol=0, atol=1e-15)


def test_as_image_puts_three_channels_last_and_scales_them_together():
    x = torch.stack([torch.zeros(2, 3), torch.full((2, 3), 2.0), torch.arange(6.0).reshape(2, 3) * 0.8])  # 3×2×3
    picture = as_image(x)
    assert picture.shape == (2, 3, 3)
    np.testing.assert_allclose(picture, (x.permute(1, 2, 0) / 4.0).numpy(), rtol=0, atol=1e-15)


@pytest.mark.parametrize("x", [
    torch.rand(64),                           # a feature vector
    torch.rand(2, 8, 8),                      # two channels
    torch.rand(1, 1, 8, 8),                   # a batch
    torch.rand(1, 8),                         # one row
    torch.rand(3, 1, 8),                      # one row, three channels
    torch.randint(0, 9, (4, 4)),              # integers (token ids), not pixels
    torch.ones(4, 4, dtype=torch.bool),
    np.ones((4, 4)),                          # not a tensor
], ids=["vector", "2-channel", "4-d", "1xW", "3x1xW", "int64", "bool", "numpy"])
def test_as_image_refuses_what_is_not_an_image(x):
    assert as_image(x) is None


def test_png_pixels_are_the_scaled_values():
    grey = np.array([[0.0, 1.0], [0.2, 0.6]])
    pixels = _pixels(png_data_uri(grey))
    assert pixels.shape[:2] == (2, 2)
    for channel in range(3):  # grey: R = G = B = the value, to 8 bits
        np.testing.assert_allclose(pixels[..., channel], grey, atol=PIXEL_ATOL)
    colour = np.zeros((3, 2, 3))
    colour[0, :, 0] = colour[1, :, 1] = colour[2, :, 2] = 1.0
    np.testing.assert_allclose(_pixels(png_data_uri(colour))[..., :3], colour, atol=PIXEL_ATOL)


def test_thumbnail_of_a_constant_image_is_mid_grey():
    thumb = thumbnail(torch.full((1, 4, 5), -3.0))
    assert thumb.text is None
    pixels = _pixels(thumb.image)
    assert pixels.shape[:2] == (4, 5)
    np.testing.assert_allclose(pixels[..., :3], 128 / 255, atol=PIXEL_ATOL)


@pytest.mark.parametrize("x, text", [
    (torch.tensor([0.5, -1.25, 1234.5678, 1e-5]), "0.5 -1.25 1.23e+03 1e-05"),
    (torch.arange(20), " ".join(map(str, range(16))) + " … (20 values, shape (20,))"),
    (torch.zeros(2, 10, dtype=torch.long), " ".join(["0"] * 16) + " … (20 values, shape (2, 10))"),
    ({"input_ids": torch.tensor([5, 6, 7, 0]), "attention_mask": torch.tensor([1, 1, 1, 0]),
      "token_type_ids": torch.tensor([0, 0, 1, 0])}, "input_ids: 5 6 7"),
    ({"input_ids": torch.tensor([3, 0]), "extra": torch.tensor([0.5])}, "input_ids: 3 0; extra: 0.5"),
], ids=["floats", "long", "matrix", "tokens", "no-mask"])
def test_thumbnail_of_a_non_image_is_text(x, text):
    assert thumbnail(x) == Thumbnail(text=text)


def test_thumbnails_fetch_each_wanted_example_once_in_batches():
    images = torch.rand(7, 1, 8, 8)
    examples = TensorExamples(images, torch.zeros(7, dtype=torch.long), name="data.train")
    out = thumbnails(examples, [5, 0, 5, 9, -1, 3, 6], batch_size=2)  # 9 and -1: out of range, dropped
    assert list(out) == [0, 3, 5, 6]
    for i, thumb in out.items():
        np.testing.assert_allclose(_pixels(thumb.image)[..., 0], as_image(images[i]), atol=PIXEL_ATOL)


class _Unreadable(Examples):
    """A split whose files went away after it was listed."""

    name = "data.train"

    def __len__(self) -> int:
        return 3

    def _fetch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise OSError("disk gone")


def test_fetch_notes_a_split_that_cannot_be_read():
    inputs = ReportInputs(train=_Unreadable(), test=TensorExamples(torch.rand(2, 4), torch.zeros(2)))
    inputs.fetch({"train": {1}, "test": {0, 1}})
    assert inputs.note == "train inputs not shown: reading them failed: OSError: disk gone"
    assert inputs.thumbs["train"] == {} and set(inputs.thumbs["test"]) == {0, 1}


def _run_json(run: TinyRun) -> dict[str, object]:
    """What run.json records of the recipe (relative paths resolve against ``base_dir``)."""
    return {"recipe": dict(run.data), "base_dir": str(run.dir), "recipe_path": str(run.recipe_path)}


def test_the_recorded_recipes_tensor_data_is_re_read(tiny_recipe):
    run = tiny_recipe("cnn", n_train=5, n_test=2)
    inputs = ReportInputs.load(run.dir / "out", _run_json(run), {})
    assert inputs.note is None and len(inputs.train) == 5 and len(inputs.test) == 2
    assert torch.equal(inputs.test.batch(torch.arange(2))[0], run.test[0])


@pytest.mark.parametrize("spec, what", [
    ({"format": "factory", "factory": "data.py:make"}, "format factory ('data.py:make')"),
    ({"format": "torchvision", "name": "LSUN", "root": "lsun"},
     "torchvision LSUN, which unpickles files under its root"),
])
def test_a_recorded_recipe_whose_data_runs_code_is_not_re_read(tiny_recipe, spec, what):
    run = tiny_recipe("mlp", n_train=5, n_test=2)
    run.data["data"]["test"] = spec
    out = run.dir / "out"
    inputs = ReportInputs.load(out, _run_json(run), {})
    assert inputs.train is None and inputs.test is None
    assert inputs.note == (f"inputs not shown: data.test of the recorded recipe is {what}; report never runs code "
                           f"named by the folder it renders; to show them: influence-cli report {out} --recipe RECIPE")


def test_without_a_recorded_recipe_the_note_says_so(tmp_path: Path):
    assert ReportInputs.load(tmp_path, {}, {}).note == ("inputs not shown: run.json: no recipe recorded; to show them: "
                                                        f"influence-cli report {tmp_path} --recipe RECIPE")


def test_a_trusted_recipe_is_read_and_its_failure_has_no_hint(tiny_recipe):
    run = tiny_recipe("mlp", n_train=5, n_test=2)
    recipe = load_recipe(run.recipe_path)
    assert ReportInputs.load(run.dir / "out", {}, {}, trusted=recipe).note is None
    (run.dir / "train.pt").unlink()
    assert ReportInputs.load(run.dir / "out", {}, {}, trusted=recipe).note == (
        f"inputs not shown: data.train.path: file not found: {run.dir / 'train.pt'}")
