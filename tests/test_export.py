"""Using the result (#6): predictions from paths, arrays and tensors; save and load; ONNX
and TorchScript exports loaded back and compared with the model."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image
from timm.data import create_transform

import nbaccel
from tests.conftest import SMALL


@pytest.fixture(scope="module")
def val_images(digits_high):
    paths = sorted((digits_high / "val").rglob("*.png"))
    return paths, [p.parent.name for p in paths]


def test_predict_from_paths_matches_the_validation_accuracy(trained, val_images):
    paths, truth = val_images
    labels, probabilities = trained.predict(paths)
    assert probabilities.shape == (len(paths), 5)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    accuracy = np.mean([a == b for a, b in zip(labels, truth)])
    assert accuracy == pytest.approx(trained.best["val_acc"], abs=1e-6)


def test_predict_takes_arrays_tensors_a_folder_and_one_image(
    trained, val_images, digits_high
):
    paths, _ = val_images
    arrays = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths[:6]])
    by_path = trained.predict(paths[:6])
    assert trained.predict(arrays).labels == by_path.labels
    tensors = torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 255
    assert trained.predict(tensors).labels == by_path.labels
    assert trained.predict(arrays[0]).labels == by_path.labels[:1]
    folder = digits_high / "val" / "7"
    assert len(trained.predict(folder).labels) == len(list(folder.iterdir()))
    with pytest.raises(ValueError, match="no image file at"):
        trained.predict(["missing.png"])


def test_predict_refuses_a_run_still_training(digits_high):
    live = nbaccel.fasttrain(
        digits_high, pretrained=False, epochs=500, stop="none", **SMALL
    )
    with pytest.raises(RuntimeError, match="needs an ended run"):
        live.predict(np.zeros((8, 8, 3), dtype=np.uint8))
    live.stop()


def test_save_and_load_give_the_same_predictions(trained, val_images, tmp_path):
    paths, _ = val_images
    path = trained.save(tmp_path / "digits.pth")
    loaded = nbaccel.load(path)
    assert (
        loaded.class_names == trained.class_names
        and loaded.data_config == trained.data_config
    )
    transform = create_transform(**loaded.data_config, is_training=False)
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[:8]])
    in_memory = (
        copy.deepcopy(trained.model).cpu().eval()
    )  # on the GPU where one trained
    with torch.no_grad():
        assert torch.allclose(loaded.model(batch), in_memory(batch), atol=1e-5)
    # The checkpoint is also a weights file to fine-tune from.
    again = nbaccel.fasttrain(
        paths[0].parents[2], pretrained=path, freeze="all", epochs=1, **SMALL
    ).wait()
    assert again.history[0]["val_acc"] > 0.8
    with pytest.raises(ValueError, match="not a file written by run.save"):
        torch.save({"weights": 1}, tmp_path / "other.pth")
        nbaccel.load(tmp_path / "other.pth")


@pytest.mark.parametrize("suffix", [".onnx", ".pt", ".pt2"])
def test_export_loads_back_with_the_model_outputs(
    trained, val_images, tmp_path, suffix
):
    paths, _ = val_images
    path = trained.export(tmp_path / f"digits{suffix}")
    transform = create_transform(**trained.data_config, is_training=False)
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[:5]])
    with torch.no_grad():
        in_memory = (
            copy.deepcopy(trained.model).cpu().eval()
        )  # on the GPU where one trained
        expected = in_memory(batch).numpy()
    if suffix == ".onnx":
        session = onnxruntime.InferenceSession(str(path))
        actual = session.run(None, {"images": batch.numpy()})[0]  # batch of 5: dynamic
    elif suffix == ".pt2":
        actual = torch.export.load(str(path)).module()(batch).detach().numpy()
    else:
        with warnings.catch_warnings():  # TorchScript is deprecated from torch 2.9 on
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.11's category
            actual = torch.jit.load(str(path))(batch).detach().numpy()
    assert np.allclose(actual, expected, rtol=1e-3, atol=1e-4)


def test_export_refuses_an_unknown_extension(trained, tmp_path):
    with pytest.raises(ValueError, match="end the name with .onnx"):
        trained.export(tmp_path / "model.tflite")
