"""Using the result (#6): predictions from paths, arrays and tensors; save and load; ONNX
and TorchScript exports loaded back and compared with the model; the int8 ONNX export and
its report (#13)."""

from __future__ import annotations

import copy
import os
import sys
import warnings

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image
from timm.data import create_transform

import nbaccel
from nbaccel.core import quantize
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


# --- int8 export (#13) ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def int8_export(trained, tmp_path_factory):
    """The fixture's run exported in int8 once, with its weights from before."""
    before = {k: v.clone() for k, v in trained.model.state_dict().items()}
    folder = tmp_path_factory.mktemp("int8")
    return trained.export(folder / "digits.onnx", quantize="int8"), before


def onnx_accuracy(path, trained, val_images) -> float:
    """Validation accuracy of an ONNX file, computed here: PIL, timm's eval transform,
    onnxruntime."""
    paths, truth = val_images
    transform = create_transform(**trained.data_config, is_training=False)
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    session = onnxruntime.InferenceSession(str(path))
    logits = session.run(None, {"images": batch.numpy()})[0]
    labels = [trained.class_names[i] for i in logits.argmax(axis=1)]
    return float(np.mean([a == b for a, b in zip(labels, truth)]))


def test_int8_export_is_smaller_and_within_the_accuracy_bound(
    trained, int8_export, val_images, tmp_path
):
    report, _ = int8_export
    assert isinstance(report, nbaccel.ExportReport)
    assert os.fspath(report) == str(report.path) and report.path.is_file()
    assert str(report) == f"{report}" == str(report.path)  # as a Path; repr: the table
    assert "val_acc" in repr(report)
    assert not list(report.path.parent.glob(".nbaccel-int8-*"))  # no work files left
    # The fp32 figures are those of a plain export (its weights in a second file).
    plain = trained.export(tmp_path / "fp32.onnx")
    fp32_bytes = plain.stat().st_size + sum(
        p.stat().st_size for p in tmp_path.glob("fp32.onnx.*")
    )
    assert report.fp32.bytes == pytest.approx(fp32_bytes, rel=0.02)
    assert report.int8.bytes == report.path.stat().st_size < 0.4 * fp32_bytes
    # Really int8: quantized weights and quantize/dequantize pairs in the graph.
    graph = onnx.load(str(report.path)).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.node}
    assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer)
    # Accuracies recomputed here, from the files; the drop within the default bound.
    assert report.int8.val_acc == pytest.approx(
        onnx_accuracy(report.path, trained, val_images), abs=1e-9
    )
    assert report.fp32.val_acc == pytest.approx(
        onnx_accuracy(plain, trained, val_images), abs=1e-9
    )
    assert report.fp32.val_acc == pytest.approx(trained.best["val_acc"], abs=0.006)
    assert report.accuracy_drop <= report.max_accuracy_drop == 0.01
    assert report.fp32.ms_per_image > 0 and report.int8.ms_per_image > 0
    assert "int8" in repr(report) and "<table>" in report._repr_html_()


def test_int8_export_leaves_the_model_weights_unchanged(trained, int8_export):
    _, before = int8_export
    after = trained.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_int8_export_over_the_bound_is_refused_and_writes_nothing(
    trained, tmp_path, monkeypatch
):
    """A real drop: calibrating on images scaled down 1000x sets activation ranges that
    real images overflow. Everything else is the real path."""

    class Dimmed(quantize._Calibration):
        def get_next(self):
            inputs = super().get_next()
            return None if inputs is None else {"images": inputs["images"] / 1000}

    monkeypatch.setattr(quantize, "_Calibration", Dimmed)
    path = tmp_path / "digits.onnx"
    path.write_bytes(b"an older file")
    with pytest.raises(
        ValueError,
        match=r"(?s)val_acc 0\.\d+ against fp32's 0\.9.*"
        r"max_accuracy_drop=0\.01.*nothing was written.*without quantize",
    ):
        trained.export(path, quantize="int8")
    assert path.read_bytes() == b"an older file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.onnx"]


def test_int8_export_refuses_bad_requests_before_any_work(trained, tmp_path):
    with pytest.raises(ValueError, match="writes ONNX only.*'digits.onnx'"):
        trained.export(tmp_path / "digits.pt", quantize="int8")
    with pytest.raises(ValueError, match="quantize='int4' is not a choice"):
        trained.export(tmp_path / "digits.onnx", quantize="int4")
    for bound in (-0.01, 1.5, "0.01", None):
        with pytest.raises(ValueError, match="max_accuracy_drop=.*between 0 and 1"):
            trained.export(
                tmp_path / "d.onnx", quantize="int8", max_accuracy_drop=bound
            )
    assert not list(tmp_path.iterdir())


def test_int8_export_without_onnxruntime_names_the_extra(
    trained, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)
    with pytest.raises(ImportError, match=r"pip install 'nbaccel\[export\]'"):
        trained.export(tmp_path / "digits.onnx", quantize="int8")
