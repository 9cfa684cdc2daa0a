"""Plan: a run's choices resolved before training, with no "auto" left but what only the
training thread can measure (the batch size that fits, and with it whether compiling pays).

`prepare.prepare_plan()` makes it on the caller's thread; the training thread reads it and never
changes it: what changes while training (the micro-batch count after running out of memory)
is the loop's own state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn
from torch.utils.data import Dataset

from nbaccel.core.decision import Decision
from nbaccel.core.model import LayerGroup
from nbaccel.core.stopping import StopRule


@dataclass(frozen=True, eq=False)
class Plan:
    """Everything the training thread needs."""

    backbone: str
    weights: str  # "timm hub", "random init" or the weights file's path
    device: torch.device
    precision_choice: Decision  # "fp32" | "bf16" | "fp16", and why
    probe_precision: bool  # CPU "auto": the training thread times bf16 against fp32
    model: (
        nn.Module
    )  # on the CPU, frozen as planned, until the training thread moves it
    groups: tuple[LayerGroup, ...]
    freeze_depth: int
    freeze_reason: str
    head_init: str  # how the new head started: "zeros", "timm's initialisation", ...
    bn_stats: bool  # re-estimate training BatchNorm statistics before each evaluation
    ema: bool  # evaluate and keep the weights' moving average (averaging.py)
    class_names: tuple[str, ...]
    train: (
        Dataset  # the training images with their transform (loaders.TransformedImages)
    )
    val: Dataset  # the validation images with the eval transform
    test: Optional[Dataset]  # the test split's, scored once at the end; or None
    data_config: dict  # timm's resolved input size, mean, std, interpolation, crop
    augment: str  # "light" | "flip" | "none"
    head_lr: float
    backbone_lr: float
    stop_rule: StopRule
    epochs: int
    seed: int
    measure_baseline: bool  # time the baseline's steps for run.savings
    batch_size: Decision  # images per step, and why (the probe's start if probe_batch)
    probe_batch: bool  # batch_size="auto" on CUDA: the training thread probes memory
    compile: Union[bool, str]  # as asked, checked; decided once the batch is known
    feature_cache: Decision
    image_cache: Decision
    workers: Decision
    channels_last: Decision
    fused: Decision
    # Checkpoints: the run directory (None: checkpoint=False), what its metadata says of
    # the plan (options, data, data config), and the checkpoint resumed from (resume.py).
    # devices=N: N data-parallel processes (launch.py); 1: the training thread
    devices: Decision = Decision("devices", 1, "devices=1: the training thread")
    # class imbalance (balance.py): the decision, and the loss's weight per class or None
    balance: Decision = Decision("balance", False, "not asked")
    class_weights: Optional[tuple[float, ...]] = None
    run_directory: Optional[Path] = None
    # Where the history goes as CSV and TensorBoard (history_log.py); None: nowhere
    log_dir: Optional[Path] = None
    checkpoint_meta: Optional[dict] = None
    resumed: Any = None

    @property
    def precision(self) -> str:
        return str(self.precision_choice.value)

    @property
    def memory_format(self) -> torch.memory_format:
        return (
            torch.channels_last if self.channels_last.value else torch.preserve_format
        )

    @property
    def frozen_all(self) -> bool:
        return self.freeze_depth == len(self.groups)
