"""Image data (imagefolder, torchvision datasets, transforms), torchvision models and Lightning /
safetensors checkpoints (influence_cli.loading.vision and the checkpoint formats)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from PIL import Image
from safetensors.torch import save_file

from conftest import ATOL, RTOL
from fixtures.image_runs import CLASSES, folder_tensors, lightning_checkpoint, make_imagefolder, train_plain
from influence_cli import Session, load_recipe, score
from influence_cli.errors import CheckpointError, DataError, RecipeError
from influence_cli.loading.data import load_split
from influence_cli.loading.vision import build_transform
from influence_cli.recipe import parse_recipe
from reference import reference_grads, reference_scores

LAYERS = ["layer4.1.bn2", "fc"]  # a BatchNorm in eval mode and the head: small, so the test stays fast
NORMALIZE = {"normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}


def _recipe(folder: Path, train: dict, test: dict | None = None, **top) -> object:
    data = {"model": {"torchvision": "resnet18", "kwargs": {"num_classes": 3}},
            "checkpoints": [{"path": "ck.pt", "learning_rate": 0.1}], "data": {"train": train}, "device": "cpu"}
    if test is not None:
        data["data"]["test"] = test
    return parse_recipe({**data, **top}, base_dir=folder)


def test_transform_steps_build_torchvision_v2():
    image = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
    out = build_transform([{"resize": [8, 8]}, {"center_crop": 6}, "to_tensor", NORMALIZE], "t")(image)
    assert out.shape == (3, 6, 6) and out.dtype == torch.float32
    plain = build_transform(None, "t")(image)  # default: to_tensor, values in [0, 1]
    torch.testing.assert_close(plain, torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255)
    resized = build_transform([{"Resize": {"size": 2, "interpolation": "nearest"}}, "ToTensor"], "t")(image)
    assert resized.shape == (3, 2, 2)


@pytest.mark.parametrize("steps,message", [
    (["random_horizontal_flip"], r"t\[0\]: 'random_horizontal_flip' is not an allowed transform \(deterministic"),
    (["to_tensor", {"color_jitter": 0.5}], r"t\[1\]: 'color_jitter' is not an allowed transform"),
    ([{"resize": 8, "center_crop": 4}], r"t\[0\]: a step is a name or a one-key mapping"),
    ([{"normalize": {"mean": [0.5]}}], r"t\[0\]: normalize: .*std"),
    ([{"resize": {"size": 4, "interpolation": "fancy"}}], r"t\[0\]: resize: 'fancy' is not a valid"),
])
def test_bad_transform_steps_are_named(steps, message):
    with pytest.raises(RecipeError, match=message):
        build_transform(steps, "t")


def test_imagefolder_labels_paths_and_extensions(tmp_path):
    make_imagefolder(tmp_path / "train", 2)
    (tmp_path / "train" / "circle" / "notes.txt").write_text("not an image")
    Image.new("RGB", (16, 16)).save(tmp_path / "train" / "square" / "extra.jpg")
    train = load_split(_recipe(tmp_path, {"format": "imagefolder", "root": "train", "extensions": ["png"]}), "train")
    assert len(train) == 6 and train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert train.describe(3) == str(tmp_path / "train" / "square" / "001.png") and train.describe_key == "path"
    x, y = train.batch(torch.tensor([0, 5]))
    want, _ = folder_tensors(tmp_path / "train")
    torch.testing.assert_close(x, want[[0, 5]])
    assert len(load_split(_recipe(tmp_path, {"format": "imagefolder", "root": "train"}), "train")) == 7  # + .jpg


def test_test_folder_keeps_the_training_class_numbering(tmp_path):
    make_imagefolder(tmp_path / "train", 1)
    make_imagefolder(tmp_path / "test", 2, classes=("square", "stripes"))
    recipe = _recipe(tmp_path, {"format": "imagefolder", "root": "train"}, {"format": "imagefolder", "root": "test"})
    assert load_split(recipe, "test").labels.tolist() == [1, 1, 2, 2]  # not [0, 0, 1, 1]
    make_imagefolder(tmp_path / "test", 1, classes=("circle",))
    (tmp_path / "test" / "dogs").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "test" / "dogs" / "0.png")
    with pytest.raises(DataError, match=r"data.test.root: class folder 'dogs' is not a class of data.train "
                                        r"\(circle, square, stripes\)"):
        load_split(recipe, "test")


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match="data.train.root: not a folder: "):
        load_split(_recipe(tmp_path, {"format": "imagefolder", "root": "missing"}), "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="data.train.root: Couldn't find any class folder"):
        load_split(_recipe(tmp_path, {"format": "imagefolder", "root": "empty"}), "train")


def _write_mnist(root: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The four raw MNIST files (idx format) under ``root/MNIST/raw``, n random 28×28 images each."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)
    for split in ("train", "t10k"):
        (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 2049, n) + labels.tobytes())
    return images, labels


def test_torchvision_dataset_from_a_local_root(tmp_path):
    images, labels = _write_mnist(tmp_path / "data", 5)
    spec = {"format": "torchvision", "name": "MNIST", "root": "data", "kwargs": {"train": False},
            "transform": ["to_tensor"]}
    test = load_split(_recipe(tmp_path, spec), "train")
    assert test.labels.tolist() == labels.tolist() and test.describe(0) is None
    x, _ = test.batch(torch.tensor([2]))
    torch.testing.assert_close(x[0, 0], torch.from_numpy(images[2]).float() / 255)
    fake = load_split(_recipe(tmp_path, {"format": "torchvision", "name": "FakeData",
                                         "kwargs": {"size": 4, "image_size": [3, 8, 8], "num_classes": 3}}), "train")
    assert fake.batch(torch.arange(4))[0].shape == (4, 3, 8, 8)


@pytest.mark.parametrize("spec,error,message", [
    ({"name": "MNIST", "root": "data", "kwargs": {"download": True}}, RecipeError,
     "data.train.kwargs.download: downloading is refused"),
    ({"name": "NotADataset", "root": "data"}, RecipeError, "data.train.name: 'NotADataset' is not a torchvision"),
    ({"name": "MNIST", "root": "data"}, DataError, "data.train: torchvision.datasets.MNIST cannot load from .*data: "
                                                   "Dataset not found"),
    ({"name": "MNIST", "root": "data", "kwargs": {"colour": True}}, RecipeError, "data.train.kwargs: .*colour"),
])
def test_torchvision_dataset_errors(tmp_path, spec, error, message):
    with pytest.raises(error, match=message):
        load_split(_recipe(tmp_path, {"format": "torchvision", **spec}), "train")


def test_lightning_and_safetensors_checkpoints_load(tmp_path):
    make_imagefolder(tmp_path / "train", 1)
    model = torchvision.models.resnet18(num_classes=3)
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(lightning_checkpoint(state, lr=0.03), tmp_path / "epoch=0-step=10.ckpt")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "final.safetensors"))
    train = {"format": "imagefolder", "root": "train"}
    recipe = _recipe(tmp_path, train, checkpoints=[
        {"path": "epoch=0-step=10.ckpt", "strip_prefix": "model."},
        {"path": "final.safetensors", "learning_rate": 0.01}])
    session = Session.from_recipe(recipe)
    assert session.learning_rates == [0.03, 0.01]  # the first from the Lightning optimizer_states
    for weights in session.weights:
        assert all(torch.equal(weights[k], state[k]) for k in state)
    with pytest.raises(CheckpointError, match=r"does not fit the model: missing .* key\(s\) the model needs, e.g. "
                                              r"'conv1.weight'"):
        Session.from_recipe(_recipe(tmp_path, train, checkpoints=[{"path": "epoch=0-step=10.ckpt"}]))
    with pytest.raises(CheckpointError, match=r"checkpoints\[0\] .*: strip_prefix 'net.' matches no state-dict key"):
        Session.from_recipe(_recipe(tmp_path, train, checkpoints=[{"path": "epoch=0-step=10.ckpt",
                                                                   "strip_prefix": "net."}]))


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    """A resnet18 trained 2 epochs on 3×4 generated 16-pixel PNGs (plain loop, SGD checkpoints)."""
    folder = tmp_path_factory.mktemp("images")
    make_imagefolder(folder / "train", 4)
    make_imagefolder(folder / "test", 1, seed=1)
    x, y = folder_tensors(folder / "train")
    train_plain(torchvision.models.resnet18(num_classes=3), (x - 0.5) / 0.25, y, folder / "ckpts", lr=0.01)
    spec = {"format": "imagefolder", "root": "train", "transform": ["to_tensor", NORMALIZE]}
    recipe = {"model": {"torchvision": "resnet18", "kwargs": {"num_classes": 3}},
              "checkpoints": {"glob": "ckpts/epoch*.pt"}, "layers": LAYERS,
              "data": {"train": spec, "test": {**spec, "root": "test"}}, "device": "cpu", "dtype": "float64",
              "batch_size": 5}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return folder


def test_resnet_on_an_imagefolder_matches_the_reference(image_run):
    session = Session.from_recipe(load_recipe(image_run / "recipe.yaml"), need_test=True)
    assert session.learning_rates == [0.01, 0.005]  # from each checkpoint's optimizer state (StepLR halves)
    result = score(session, method="tracin", k=12, keep_matrix=True)
    states = [torch.load(p, weights_only=True)["model_state_dict"] for p in sorted((image_run / "ckpts").glob("*.pt"))]
    factory = lambda: torchvision.models.resnet18(num_classes=3)  # noqa: E731
    # the loader's own tensors (their pixels are checked against PIL in the imagefolder test)
    train = reference_grads(factory, states, *session.train.batch(torch.arange(12)), LAYERS)
    test = reference_grads(factory, states, *session.test.batch(torch.arange(3)), LAYERS)
    want = reference_scores("tracin", train, test, session.learning_rates)
    torch.testing.assert_close(result.passes.matrix, want, rtol=RTOL, atol=ATOL)
    entry = result.to_dict()["test"][2]
    assert entry["path"].endswith("test/stripes/000.png")
    assert entry["proponents"][0]["path"].startswith(str(image_run / "train" / CLASSES[entry["proponents"][0]["label"]]))
