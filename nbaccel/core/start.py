"""fasttrain(): the one-call entry point, and the two steps it is made of (prepare, start)."""

from __future__ import annotations

from typing import Any, Optional

from nbaccel.core.config import TrainConfig
from nbaccel.core.job import prepare_job
from nbaccel.core.run import Run


def fasttrain(
    data: Any,
    val: Any = 0.2,
    backbone: str = "resnet18",
    pretrained: Any = True,
    freeze: Any = "auto",
    precision: str = "auto",
    stop: str = "patience:3",
    epochs: int = 20,
    batch_size: Any = "auto",
    lr: Any = "auto",
    image_size: Optional[int] = None,
    device: str = "auto",
    seed: int = 0,
    augment: str = "auto",
    cache: Any = "auto",
    compile: Any = "auto",
    channels_last: Any = "auto",
    fused: Any = "auto",
    workers: Any = "auto",
    baseline: str = "measure",
    background: bool = True,
) -> Run:
    """Fine-tunes a timm backbone on `data` in a background thread.

    Every choice is checked here, before any thread starts: bad input raises ValueError.

    Args:
        data: a folder (class subfolders, or train/ + val|valid/ subfolders), an (images,
            labels) pair of arrays or tensors, or a torch Dataset yielding (image, label).
        val: fraction held out for validation (stratified, seeded), or a second data object.
        backbone: any timm model name.
        pretrained: True (timm's published weights), False (random init) or a weights file.
        freeze: k freezes layer groups 0..k-1; 0 trains all; "all" the head only; "auto".
        precision: "auto" | "fp32" | "bf16" | "fp16".
        stop: stopping rule, e.g. "patience:3", "target:val_acc>=0.95 | time:10m", "none".
        epochs: the epoch budget.
        batch_size: images per step, or "auto".
        lr: head learning rate, or "auto" (3e-3; pretrained backbone groups get a tenth).
        image_size: square input size in pixels; None uses the backbone's default.
        device: "auto" | "cpu" | "cuda" | "cuda:N" | "mps".
        seed: seeds the split, the new head, the shuffle and augmentation.
        augment: "light" (random crops), "flip" (crops and horizontal flips), "none", or
            "auto" (light; none when only the head trains, so its features can be cached).
        baseline: "measure" times a few baseline steps first, for `run.savings`; "off".
        cache: "auto" keeps decoded images, and a frozen backbone's features, in memory
            when they fit; True insists (an error when nothing can be); False never caches.
        compile: torch.compile the model in the training thread: True, False, or "auto"
            (on CUDA, for an epoch budget of 1000 steps or more).
        channels_last: channels-last memory layout: True, False, or "auto" (convnets).
        fused: AdamW's fused kernel: True, False, or "auto" (where torch has one).
        workers: DataLoader worker processes, or "auto" (0 where that is faster).
        background: False blocks until the run has ended (scripts and tests).

    Returns:
        The Run, already started.
    """
    config = TrainConfig(
        data=data,
        val=val,
        backbone=backbone,
        pretrained=pretrained,
        freeze=freeze,
        precision=precision,
        stop=stop,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        image_size=image_size,
        device=device,
        seed=seed,
        augment=augment,
        baseline=baseline,
        cache=cache,
        compile=compile,
        channels_last=channels_last,
        fused=fused,
        workers=workers,
    )
    return start_run(config, background=background)


def prepare_run(config: TrainConfig) -> Run:
    """A Run for `config`, checked and prepared but not started: a panel can subscribe to
    it and be drawn before training competes with the notebook for the CPU."""
    return Run(prepare_job(config))


def start_run(config: TrainConfig, background: bool = True) -> Run:
    """Prepares and starts a Run for `config` (what fasttrain() and the panel call).
    background=False trains on this thread and returns the ended run (Ctrl-C stops it)."""
    run = prepare_run(config).start(background)
    return run if background else run.wait()
