"""A smaller ONNX model: int8 weights and activations through onnxruntime's static
quantization, calibrated on training images, scored against the fp32 export on the
validation images, and refused when it loses more accuracy than the user allows.

report = run.export("digits.onnx", quantize="int8", max_accuracy_drop=0.01)
report.fp32.bytes, report.int8.ms_per_image, report.int8.val_acc
"""

from __future__ import annotations

import html
import math
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from timm.data import create_transform
from torch import nn
from torch.utils.data import DataLoader

from nbaccel.core.data import ImageSource
from nbaccel.core.loaders import TransformedImages
from nbaccel.core.saving import export

QUANTIZE = ("int8",)
CALIBRATION_IMAGES = 256  # training images whose activations set the int8 ranges
BATCH = 64  # images per onnxruntime call when calibrating and scoring
WARM_UP = 5  # latency: runs dropped before timing (allocations, caches)
TIMED_RUNS = 50  # latency: the median of this many batch-1 runs ...
TIMED_SECONDS = 1.0  # ... or of those that fit in this time (at least 10)
ROUNDS = 2  # fp32 and int8 timed in turn this many times; the lower median counts


@dataclass(frozen=True)
class ModelFigures:
    """One exported model, measured: its file size, CPU latency per image (batch 1, the
    median run) and accuracy on the run's validation images."""

    bytes: int
    ms_per_image: float
    val_acc: float


@dataclass(frozen=True)
class ExportReport:
    """What run.export(path, quantize="int8") wrote and measured. Path-like: it opens,
    loads and copies as the int8 file."""

    path: Path  # the int8 ONNX file
    fp32: ModelFigures  # the same model exported in float32 (not kept)
    int8: ModelFigures
    max_accuracy_drop: float  # the bound the int8 model was held to

    @property
    def accuracy_drop(self) -> float:
        """fp32's validation accuracy minus int8's (negative: int8 scored higher)."""
        return self.fp32.val_acc - self.int8.val_acc

    def __fspath__(self) -> str:
        return str(self.path)

    def _rows(self) -> list[tuple[str, str, str, str]]:
        return [
            (
                name,
                f"{figures.bytes / 1e6:.2f} MB",
                f"{figures.ms_per_image:.3g}",
                f"{figures.val_acc:.4f}",
            )
            for name, figures in (("fp32", self.fp32), ("int8", self.int8))
        ]

    def _summary(self) -> str:
        size = self.fp32.bytes / self.int8.bytes
        time = self.int8.ms_per_image / self.fp32.ms_per_image
        return (
            f"int8: {size:.1f}x smaller, {time:.2f}x fp32's time per image, "
            f"val_acc drop {self.accuracy_drop:.4f} (at most "
            f"{self.max_accuracy_drop:g} allowed)"
        )

    def __str__(self) -> str:  # as a Path: str(report) and f"{report}" are the file
        return str(self.path)

    def __repr__(self) -> str:
        header = ("", "size", "ms/image", "val_acc")
        lines = [
            f"{a:<5}{b:>10}{c:>10}{d:>9}" for a, b, c, d in (header, *self._rows())
        ]
        return "\n".join(
            [f"<nbaccel.ExportReport {self.path.name}>", *lines, self._summary()]
        )

    def _repr_html_(self) -> str:
        cells = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
            for row in self._rows()
        )
        return (
            f"<div><b>{html.escape(str(self.path))}</b> (int8 ONNX)<table>"
            "<tr><th></th><th>size</th><th>ms/image (CPU, batch 1)</th>"
            f"<th>val_acc</th></tr>{cells}</table>{html.escape(self._summary())}</div>"
        )


def check_quantize_request(
    path: Union[str, os.PathLike], quantize: Any, max_accuracy_drop: Any
) -> Path:
    """The checks that need no work: the format, the file name, the bound.

    Raises:
        ValueError: any of them is wrong, naming the fix.
    """
    path = Path(path).expanduser()
    if quantize not in QUANTIZE:
        raise ValueError(
            f"quantize={quantize!r} is not a choice: quantize='int8', or None for a "
            "float32 export"
        )
    if path.suffix != ".onnx":
        raise ValueError(
            f"quantize='int8' writes ONNX only, and {path.name!r} does not end in "
            f".onnx: name the file {path.with_suffix('.onnx').name!r}"
        )
    bad = isinstance(max_accuracy_drop, bool) or not isinstance(
        max_accuracy_drop, (int, float)
    )
    if bad or not 0 <= max_accuracy_drop <= 1:
        raise ValueError(
            f"max_accuracy_drop={max_accuracy_drop!r}: give the largest drop in "
            "validation accuracy you accept, a number between 0 and 1 (0.01 is one "
            "percentage point)"
        )
    return path


def export_int8(
    model: nn.Module,
    path: Path,
    data_config: dict,
    train: ImageSource,
    val: ImageSource,
    max_accuracy_drop: float,
    seed: int = 0,
) -> ExportReport:
    """Exports `model` to ONNX in float32, quantizes it to int8 (static, QDQ, weights per
    channel, activation ranges from up to CALIBRATION_IMAGES images of `train`), scores
    both on `val` with onnxruntime and writes the int8 model to `path` when it keeps
    its accuracy. `model` itself is not changed. Call check_quantize_request first.

    Raises:
        ValueError: the int8 model's accuracy drops by more than `max_accuracy_drop`;
            nothing is written at `path`.
        ImportError: onnxruntime is missing (pip install 'nbaccel[export]').
    """
    ort = _import_onnxruntime()
    import onnx

    transform = create_transform(**data_config, is_training=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Beside the target, so the finished file is moved into place in one step; the
    # float32 export and the intermediate files go with the folder.
    with tempfile.TemporaryDirectory(prefix=".nbaccel-int8-", dir=path.parent) as tmp:
        names = ("written.onnx", "fp32.onnx", "pre.onnx", "q.onnx")
        written, fp32, ready, int8 = (Path(tmp) / name for name in names)
        export(model, written, data_config)  # loads it back and checks its outputs
        # One file (the exporter puts the weights in a second one, written.onnx.data),
        # so that its size is the model's and the tools below read it whole.
        onnx.save(onnx.load(str(written)), str(fp32))
        calibration = _sample(train, CALIBRATION_IMAGES, seed)
        quantize_static(fp32, ready, int8, _batches(calibration, transform))
        files = {"fp32": fp32, "int8": int8}
        sessions = {name: _session(ort, file) for name, file in files.items()}
        accuracy = score(sessions, val, transform)
        drop = accuracy["fp32"] - accuracy["int8"]
        if drop > max_accuracy_drop + 1e-9:
            raise ValueError(
                f"the int8 model scores val_acc {accuracy['int8']:.4f} against fp32's "
                f"{accuracy['fp32']:.4f}, a drop of {drop:.4f}, more than "
                f"max_accuracy_drop={max_accuracy_drop:g}; nothing was written to "
                f"{str(path)!r}. Allow a larger drop (max_accuracy_drop=...), or keep "
                "float32 (run.export(path) without quantize)"
            )
        latency = compare_latency(sessions, (1, *data_config["input_size"]))
        figures = {
            name: ModelFigures(
                files[name].stat().st_size, latency[name], accuracy[name]
            )
            for name in files
        }
        del sessions  # onnxruntime holds the files open on some systems
        os.replace(int8, path)
    return ExportReport(path, figures["fp32"], figures["int8"], max_accuracy_drop)


def quantize_static(
    source: Path, ready: Path, target: Path, batches: Iterator[np.ndarray]
) -> None:
    """onnxruntime's static quantization of `source` into `target`: QDQ format, uint8
    activations whose ranges the calibration `batches` set (min-max), int8 weights per
    output channel. `ready` holds the pre-processed model in between."""
    from onnxruntime import quantization

    # Shape inference and graph clean-up first, as onnxruntime advises. torch's exporter
    # has already folded BatchNorm into the convolutions, so on timm's convnets the graph
    # comes out the same (docs/design.md); it is kept for the models where it is not.
    quantization.quant_pre_process(str(source), str(ready), skip_symbolic_shape=True)
    quantization.quantize_static(
        str(ready),
        str(target),
        _Calibration(batches),
        quant_format=quantization.QuantFormat.QDQ,
        per_channel=True,
        activation_type=quantization.QuantType.QUInt8,
        weight_type=quantization.QuantType.QInt8,
    )


def score(
    sessions: dict[str, Any], images: ImageSource, transform: Any
) -> dict[str, float]:
    """For each onnxruntime session, the share of `images` whose top logit is their
    label; each batch is read once and given to every session."""
    hits = dict.fromkeys(sessions, 0)
    for inputs, labels in _batches(images, transform, with_labels=True):
        for name, session in sessions.items():
            logits = session.run(None, {"images": inputs})[0]
            hits[name] += int((logits.argmax(axis=1) == labels).sum())
    return {name: count / max(len(images), 1) for name, count in hits.items()}


def compare_latency(
    sessions: dict[str, Any], shape: tuple[int, ...], rounds: int = ROUNDS
) -> dict[str, float]:
    """measure_latency for each session, alternated over `rounds`; each keeps its lowest
    median, so that a burst of other work on the machine lands on both or neither."""
    best = {name: math.inf for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            best[name] = min(best[name], measure_latency(session, shape))
    return best


def measure_latency(session: Any, shape: tuple[int, ...]) -> float:
    """Milliseconds per image at batch 1: the median of TIMED_RUNS runs after WARM_UP
    runs, or of those that fit in TIMED_SECONDS (at least 10)."""
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    for _ in range(WARM_UP):
        session.run(None, {"images": image})
    times: list[float] = []
    deadline = time.perf_counter() + TIMED_SECONDS
    while len(times) < TIMED_RUNS and (
        len(times) < 10 or time.perf_counter() < deadline
    ):
        start = time.perf_counter()
        session.run(None, {"images": image})
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol: get_next() gives one input dict, or
    None at the end."""

    def __init__(self, batches: Iterator[np.ndarray]) -> None:
        self.batches = batches

    def get_next(self) -> Optional[dict]:
        batch = next(self.batches, None)
        return None if batch is None else {"images": batch}


def _batches(
    images: ImageSource, transform: Any, with_labels: bool = False
) -> Iterator[Any]:
    loader = DataLoader(TransformedImages(images, transform), batch_size=BATCH)
    with torch.no_grad():
        for inputs, labels in loader:
            batch = inputs.float().numpy()
            yield (batch, labels.numpy()) if with_labels else batch


def _sample(images: ImageSource, count: int, seed: int) -> ImageSource:
    """Up to `count` of `images`, drawn at random (seeded): the classes about in their
    proportions (a class rarer than 1 in `count` may be missing)."""
    if len(images) <= count:
        return images
    chosen = np.random.default_rng(seed).choice(len(images), count, replace=False)
    return images.subset(sorted(int(i) for i in chosen))


def _session(ort: Any, path: Path) -> Any:
    # The same options for both models, so their latencies compare.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
        import onnxruntime.quantization  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"quantize='int8' needs onnxruntime ({error.name} is missing): "
            "pip install 'nbaccel[export]' (onnx, onnxscript, onnxruntime)"
        ) from error
    return onnxruntime
