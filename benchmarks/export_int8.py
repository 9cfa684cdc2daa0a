"""What int8 quantization and pruning do to an exported model (issue #13): file size,
CPU latency per image (batch 1) and validation accuracy, one JSON line per variant.

    python benchmarks/export_int8.py                  # test_resnet, resnet18, lite0
    python benchmarks/export_int8.py --only test_resnet

Variants of each trained model, all ONNX, all scored and timed with onnxruntime the same way
run.export(quantize="int8") does (nbaccel/core/quantize.py):
  fp32              run.export(path): the float32 export (weights in one file)
  int8_static       run.export(path, quantize="int8"): QDQ, per-channel weights, activation
                    ranges from 256 training images, after quant_pre_process
  int8_static_raw   the same without quant_pre_process (BatchNorm not folded first)
  int8_dynamic      quantize_dynamic: int8 weights, activations quantized per call
  pruned_30/50      global L1 magnitude pruning of 30% / 50% of the conv and linear weights
                    (torch.nn.utils.prune, made permanent, no fine-tuning after), fp32
  pruned_50_int8    the 50% pruned model through the int8_static path
"zip_bytes" is the file compressed with zlib level 9: pruning's zeros show only there.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import tempfile
import zlib
from pathlib import Path

import onnx
import onnxruntime
from onnxruntime import quantization
from timm.data import create_transform
from torch import nn
from torch.nn.utils import prune

import nbaccel
from nbaccel.core import quantize as q
from nbaccel.core.saving import export
from nbaccel.core.splits import resolve_sources

MODELS = {
    "test_resnet": dict(
        digits=range(5, 10), backbone="test_resnet", image_size=32, epochs=3
    ),
    "resnet18": dict(digits=range(10), backbone="resnet18", image_size=64, epochs=4),
    "lite0": dict(
        digits=range(10), backbone=nbaccel.datasets.LITE0, image_size=96, epochs=3
    ),
}


def train(name: str, root: Path) -> nbaccel.Run:
    spec = dict(MODELS[name])
    data = nbaccel.datasets.digits(spec.pop("digits"), root=root)
    pretrained = (
        str(nbaccel.datasets.efficientnet_lite0()) if name == "lite0" else False
    )
    return nbaccel.fasttrain(
        data,
        pretrained=pretrained,
        precision="fp32",
        stop="none",
        checkpoint=False,
        background=False,
        **spec,
    )


def measure(files: dict[str, Path], run: nbaccel.Run, val, transform) -> dict:
    """Each file's size, zipped size and val_acc; latencies timed in turn (3 rounds, each
    variant's lowest median), so that other work on the machine falls on all alike."""
    sessions = {v: q._session(onnxruntime, f) for v, f in files.items()}
    shape = (1, *run.data_config["input_size"])
    latency = q.compare_latency(sessions, shape, rounds=3)
    accuracy = q.score(sessions, val, transform)
    figures = {}
    for variant, file in files.items():
        data = file.read_bytes()
        figures[variant] = dict(
            bytes=len(data),
            zip_bytes=len(zlib.compress(data, 9)),
            ms_per_image=round(latency[variant], 4),
            val_acc=round(accuracy[variant], 4),
        )
    return figures


def fp32_file(model: nn.Module, run: nbaccel.Run, folder: Path, name: str) -> Path:
    written, single = folder / f"{name}-written.onnx", folder / f"{name}.onnx"
    export(model, written, run.data_config)
    onnx.save(onnx.load(str(written)), str(single))
    return single


def static_int8(source: Path, target: Path, train, transform, pre: bool) -> Path:
    batches = q._batches(q._sample(train, q.CALIBRATION_IMAGES, 0), transform)
    if pre:  # run.export(quantize="int8")'s own function
        q.quantize_static(source, target.with_suffix(".pre.onnx"), target, batches)
        return target
    quantization.quantize_static(
        str(source),
        str(target),
        q._Calibration(batches),
        quant_format=quantization.QuantFormat.QDQ,
        per_channel=True,
        activation_type=quantization.QuantType.QUInt8,
        weight_type=quantization.QuantType.QInt8,
    )
    return target


def pruned(model: nn.Module, amount: float) -> nn.Module:
    model = copy.deepcopy(model).cpu().eval()
    weights = [
        (m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    prune.global_unstructured(
        weights, pruning_method=prune.L1Unstructured, amount=amount
    )
    for module, name in weights:
        prune.remove(module, name)
    return model


def bench(name: str, root: Path, folder: Path) -> None:
    run = train(name, root)
    sources = resolve_sources(run.config.data, run.config.val, run.config.seed)
    transform = create_transform(**run.data_config, is_training=False)
    fp32 = fp32_file(run.model, run, folder, f"{name}-fp32")
    files = {"fp32": fp32}
    files["int8_static"] = static_int8(
        fp32, folder / f"{name}-int8.onnx", sources.train, transform, pre=True
    )
    files["int8_static_raw"] = static_int8(
        fp32, folder / f"{name}-int8-raw.onnx", sources.train, transform, pre=False
    )
    # quantize_dynamic's shape inference refuses the exporter's recorded shapes (the
    # head's weight, (classes, features) vs (features, classes)): it starts without them.
    bare = onnx.load(str(fp32))
    del bare.graph.value_info[:]
    onnx.save(bare, str(folder / f"{name}-bare.onnx"))
    files["int8_dynamic"] = folder / f"{name}-dyn.onnx"
    quantization.quantize_dynamic(
        str(folder / f"{name}-bare.onnx"),
        str(files["int8_dynamic"]),
        weight_type=quantization.QuantType.QInt8,
    )
    for amount in (0.3, 0.5):
        key = f"pruned_{int(amount * 100)}"
        files[key] = fp32_file(pruned(run.model, amount), run, folder, f"{name}-{key}")
    files["pruned_50_int8"] = static_int8(
        files["pruned_50"],
        folder / f"{name}-p50-int8.onnx",
        sources.train,
        transform,
        pre=True,
    )
    for variant, figures in measure(files, run, sources.val, transform).items():
        line = dict(
            model=name,
            image_size=run.data_config["input_size"][-1],
            variant=variant,
            torch_val_acc=round(run.best["val_acc"], 4),
            device=platform.processor() or platform.machine(),
            onnxruntime=onnxruntime.__version__,
            **figures,
        )
        print(json.dumps(line), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(MODELS), default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        for name in args.only or list(MODELS):
            bench(name, root, Path(tmp))


if __name__ == "__main__":
    main()
