"""TrainConfig: every choice of a run in one frozen dataclass, checked when it is built."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Union

from nbaccel.core.stopping import StopRule, parse_stop_rule

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUGMENTS = ("auto", "light", "flip", "none")
SWITCHES = ("auto", True, False)
BASELINES = ("measure", "off")
Pretrained = Union[bool, str, "os.PathLike[str]"]


@dataclass(frozen=True, eq=False)
class TrainConfig:
    """What to train and how. Values equal to "auto" are resolved when the run starts.

    Raises ValueError from the constructor when a value is malformed; choices that depend on
    the data, the model or the hardware are checked by `prepare_job`.
    """

    # A folder (class subfolders, or train/ + val|valid/), an (images, labels) pair, or a
    # torch Dataset yielding (image, label).
    data: Any = field(repr=False)
    # Fraction held out for validation (stratified, seeded), or a second data object.
    val: Any = field(default=0.2, repr=False)
    # Any timm model name, e.g. "resnet18", "convnext_tiny", "vit_small_patch16_224".
    backbone: str = "resnet18"
    # True: timm's published weights; False: random init; a path: a local weights file.
    pretrained: Pretrained = True
    # k: freeze layer groups 0..k-1; 0: train everything; "all": head only; "auto": by rule.
    freeze: Union[int, str] = "auto"
    # "auto" picks bf16 on CUDA >= 8.0, fp16 on older CUDA, fp32 on CPU.
    precision: str = "auto"
    # Stopping rule text; see nbaccel.core.stopping for the grammar.
    stop: str = "patience:3"
    # The epoch budget: the most epochs the run will train.
    epochs: int = 20
    # Images per step; "auto" picks one for the device and the data size.
    batch_size: Union[int, str] = "auto"
    # Head learning rate; "auto" is 3e-3. Unfrozen backbone groups train at lr/10
    # when pretrained (large updates would wash out what the weights already know).
    lr: Union[float, str] = "auto"
    # Square input size in pixels; None uses the backbone's own default.
    image_size: Union[int, None] = None
    # "auto" | "cpu" | "cuda" | "cuda:1" | "mps".
    device: str = "auto"
    # Seeds the split, the model's new layers, the shuffle and the augmentation.
    seed: int = 0
    # Train-time augmentation: "light" (random crop of 80-100% of the image), "flip"
    # (light plus horizontal flips), "none"; "auto" is light, or none when only the head
    # trains (a linear probe: its features can then be computed once and cached). Flips
    # are never automatic: they change the meaning of text, digits and some medical images.
    augment: str = "auto"
    # "measure": time a few baseline steps (every layer trained, fp32) on the real batches
    # before training, to report the time saved (run.savings); "off": skip that.
    baseline: str = "measure"
    # Keep decoded images, and a frozen backbone's features, in memory: "auto" caches what
    # fits its budget and says why not otherwise; True insists (an error when it cannot);
    # False never caches.
    cache: Union[bool, str] = "auto"
    # torch.compile the model (in the training thread; its compile time is counted):
    # "auto" compiles on CUDA when the epoch budget is long enough to repay it.
    compile: Union[bool, str] = "auto"
    # Channels-last memory layout: "auto" uses it for convolutional backbones.
    channels_last: Union[bool, str] = "auto"
    # AdamW's fused kernel (one kernel updates every parameter): "auto" where torch has it.
    fused: Union[bool, str] = "auto"
    # DataLoader worker processes, or "auto" (0 when loading in the training thread is
    # faster: cached images, CPU training, a small dataset).
    workers: Union[int, str] = "auto"

    def __post_init__(self) -> None:
        _check(
            isinstance(self.backbone, str) and self.backbone,
            "backbone must be a timm model name, e.g. 'resnet18'",
        )
        _check(
            isinstance(self.pretrained, (bool, str, os.PathLike)),
            f"pretrained must be True, False or a weights file path, got {self.pretrained!r}",
        )
        if isinstance(self.freeze, str) and self.freeze.strip().isdigit():
            object.__setattr__(self, "freeze", int(self.freeze))
        _check(
            self.freeze in ("auto", "all")
            or (_is_int(self.freeze) and self.freeze >= 0),
            f"freeze must be a whole number >= 0, 'all' or 'auto', got {self.freeze!r}",
        )
        _check(
            self.precision in PRECISIONS,
            f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}",
        )
        _check(
            _is_int(self.epochs) and self.epochs >= 1,
            f"epochs must be a whole number >= 1, got {self.epochs!r}",
        )
        _check(
            self.batch_size == "auto"
            or (_is_int(self.batch_size) and self.batch_size >= 1),
            f"batch_size must be 'auto' or a whole number >= 1, got {self.batch_size!r}",
        )
        _check(
            self.lr == "auto"
            or (
                isinstance(self.lr, (int, float))
                and not isinstance(self.lr, bool)
                and self.lr > 0
            ),
            f"lr must be 'auto' or a number > 0, got {self.lr!r}",
        )
        _check(
            self.image_size is None
            or (_is_int(self.image_size) and self.image_size >= 8),
            f"image_size must be None or a whole number >= 8 pixels, got {self.image_size!r}",
        )
        _check(
            isinstance(self.device, str),
            f"device must be a string like 'auto', 'cpu' or 'cuda', got {self.device!r}",
        )
        _check(_is_int(self.seed), f"seed must be a whole number, got {self.seed!r}")
        _check(
            self.augment in AUGMENTS,
            f"augment must be one of {', '.join(AUGMENTS)}, got {self.augment!r}",
        )
        _check(
            self.baseline in BASELINES,
            f"baseline must be one of {', '.join(BASELINES)}, got {self.baseline!r}",
        )
        for name in ("cache", "compile", "channels_last", "fused"):
            value = getattr(self, name)
            _check(
                any(value is choice or value == choice for choice in SWITCHES)
                and not _is_int(value),
                f"{name} must be 'auto', True or False, got {value!r}",
            )
        _check(
            self.workers == "auto" or (_is_int(self.workers) and self.workers >= 0),
            f"workers must be 'auto' or a whole number >= 0, got {self.workers!r}",
        )
        _check(
            self.val is not None,
            "val must be a fraction between 0 and 1 (e.g. 0.2) or a data object, got None",
        )
        if isinstance(self.val, float) or (
            _is_int(self.val) and not isinstance(self.val, bool)
        ):
            _check(
                0 < self.val < 1,
                f"val must be a fraction between 0 and 1 (e.g. 0.2) or a data object, got {self.val!r}",
            )
        parse_stop_rule(self.stop)  # a bad rule fails here, naming the bad term

    @property
    def stop_rule(self) -> StopRule:
        return parse_stop_rule(self.stop)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(ok: Any, message: str) -> None:
    if not ok:
        raise ValueError(message)
