"""The closed list of events the training thread emits, in order, on one queue.

Payloads are plain numbers and strings, never tensors or models, so a subscriber can keep,
print or send them anywhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Union

from nbaccel.core.savings import Savings


@dataclass(frozen=True)
class RunStarted:
    """The run's resolved setup: what "auto" became, and why."""

    backbone: str
    pretrained: str  # "timm hub", "random init" or the weights file's path
    device: str
    precision: str
    freeze_depth: int  # groups 0..freeze_depth-1 are frozen
    freeze_reason: str  # why this depth: the user's choice or the "auto" rule's words
    layer_groups: tuple[str, ...]  # the backbone's groups by name, stem first
    trainable_params: int
    total_params: int
    class_names: tuple[str, ...]
    train_images: int
    val_images: int
    batch_size: int
    epochs: int
    steps_per_epoch: int
    head_lr: float
    backbone_lr: float
    stop: str
    image_size: int
    augment: str = "light"  # what augment="auto" became
    # one line per speed-up: "feature cache: off (why)", "compile: on (why)", ...
    speedups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Progress:
    """A few times an epoch: the running training loss and speed."""

    epoch: int
    step: int  # 1-based step within the epoch
    steps_per_epoch: int
    train_loss: float  # mean over the epoch's steps so far
    images_per_s: float
    elapsed_s: float
    # set when the run changed course: e.g. smaller micro-batches after running out of memory
    note: Optional[str] = None


@dataclass(frozen=True)
class EpochEnded:
    """One finished epoch: one row of run.history."""

    epoch: int
    train_loss: float
    val_loss: float
    val_acc: float
    images_per_s: float
    epoch_s: float
    elapsed_s: float
    is_best: bool  # this epoch's weights are the best so far (and are kept)

    def as_row(self) -> dict:
        row = asdict(self)
        del row["is_best"]
        return row


@dataclass(frozen=True)
class SavingsUpdated:
    """The time saved against the baseline: after the calibration, after each epoch (both
    projected), and once more, measured, just before RunEnded."""

    savings: Savings  # plain numbers and strings, frozen


@dataclass(frozen=True)
class RunEnded:
    """The last event of every run, whatever happened."""

    status: str  # "finished" | "stopped" | "failed"
    reason: (
        str  # "patience", "target", "time", "epochs", "user", "nan" or the error text
    )
    best_epoch: Optional[int]
    elapsed_s: float  # the run's wall time, calibration included, paused time left out
    traceback: Optional[str] = None  # the formatted traceback when status == "failed"


Event = Union[RunStarted, Progress, EpochEnded, SavingsUpdated, RunEnded]
