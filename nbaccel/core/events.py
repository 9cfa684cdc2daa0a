"""The events a run publishes, in order, and the plain measurements they carry.

The training thread puts RunStarted, Progress, EpochEnded and RunEnded on one queue, and
one record for the publisher alone, Measured (what the calibration timed and what the
speed-ups cost), from which the publisher derives SavingsUpdated (see savings.py). Payloads
are plain numbers and strings, never tensors or models, so a subscriber can keep, print or
send them anywhere. This module imports nothing from nbaccel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Union


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
    val_batches: int = 0  # validation batches per epoch
    head_init: str = (
        ""  # how the new head started: "zeros", "timm's initialisation", ...
    )
    test_images: int = 0  # the test split, scored once at the end (0: none)
    # data-parallel processes (devices=N), each with batch_size images per step and its
    # steps_per_epoch; 1: the training thread
    devices: int = 1
    # class imbalance: "balance: class-weighted loss (why)" or "balance: off (why)"
    balance: str = ""


@dataclass(frozen=True)
class Progress:
    """A few times an epoch: the running training loss and speed."""

    epoch: int
    step: int  # 1-based step within the epoch (0: before its first step)
    steps_per_epoch: int
    train_loss: float  # mean over the epoch's steps so far
    images_per_s: float
    elapsed_s: float
    # set when the run changed course, e.g. smaller micro-batches after running out of
    # memory; the other fields then repeat the latest figures
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
    # each class's recall on the validation images, in class_names' order (NaN: a
    # class with no validation image); not a history column
    class_recall: tuple[float, ...] = ()

    def as_row(self) -> dict:
        row = asdict(self)
        del row["is_best"], row["class_recall"]
        return row


@dataclass(frozen=True)
class TestScore:
    """The test split, scored once with the best epoch's weights when a run ends (finished,
    or stopped after at least one epoch)."""

    epoch: int  # whose weights were scored
    images: int
    test_loss: float
    test_acc: float
    error: Optional[str] = None  # why it could not be scored (the scores are then NaN)


@dataclass(frozen=True)
class RunEnded:
    """The last event of every run, whatever happened."""

    status: str  # "finished" | "stopped" | "failed"
    reason: str  # "patience", "target", "time", "epochs", "user", "nan" or the error
    best_epoch: Optional[int]
    elapsed_s: float  # the run's wall time, calibration included, paused time left out
    traceback: Optional[str] = None  # the formatted traceback when status == "failed"
    test: Optional[TestScore] = None  # the test split's score, when the data has one


def failed_run(
    error: BaseException, elapsed_s: float, traceback_text: str = ""
) -> RunEnded:
    """The end of a run that raised `error`: its type and message as the reason."""
    reason = f"{type(error).__name__}: {error}"
    return RunEnded("failed", reason, None, elapsed_s, traceback_text)


# --- what the training thread measures before the first epoch ------------------------------


@dataclass(frozen=True)
class Calibration:
    """Seconds per batch, measured on the run's own batches. Train and val times are data
    (read, decode, transform) plus compute (forward, and for training backward and the
    optimizer step)."""

    train_data_s: float  # per training batch, read from the source
    val_data_s: float  # per validation batch, read from the source
    baseline_step_s: float  # compute: every layer trained, fp32 (at the run's batch)
    frozen_fp32_step_s: float  # compute: the run's frozen layers, fp32
    own_step_s: float  # compute: the run's frozen layers and precision
    fp32_eval_s: float  # compute: a validation batch in fp32
    own_eval_s: float  # compute: a validation batch in the run's precision
    steps_timed: int  # timed steps per configuration (fewest of them)
    cost_s: float  # wall time the calibration took, warm-ups included
    cached_train_data_s: float = 0.0  # per training batch from the image cache (if any)
    cached_val_data_s: float = 0.0
    optimizer_gain_s: float = 0.0  # what the fused AdamW saves per step (if used)
    feature_step_s: float = 0.0  # compute: a training step on cached features (if any)
    feature_eval_s: float = 0.0  # compute: a validation batch on cached features
    # Re-estimating BatchNorm statistics once (an epoch's cost): timed on the run's first
    # re-estimation, reported in a later Measured; 0 until then.
    bn_stats_s: float = 0.0
    ema_s: float = 0.0  # the weights' average: an epoch's updates and swaps (if on)
    # Batches the baseline could not take whole (out of memory) were timed smaller and
    # scaled to the run's batch; these say how, in words (empty: timed as they are).
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Acceleration:
    """The speed-ups measured on the training thread before the first epoch."""

    image_cache: bool = False  # decoded images kept after the first epoch
    cache_fill_s: Optional[float] = None  # computing the frozen features, once
    compile_s: float = 0.0  # torch.compile's warm-up
    compile_gain_s: float = 0.0  # seconds a compiled training step saves


@dataclass(frozen=True)
class Measured:
    """For the publisher alone (never passed to subscribers): what the training thread
    measured before its first epoch. The publisher derives SavingsUpdated from it."""

    calibration: Calibration
    acceleration: Acceleration
    elapsed_s: float


@dataclass(frozen=True)
class Savings:
    """How much sooner this run ends than the baseline would, and how each number was got."""

    baseline_s: float  # the baseline's projected wall time for the whole epoch budget
    actual_s: (
        float  # this run's wall time: measured once ended, projected while running
    )
    saved_s: float  # baseline_s - actual_s
    speedup: float  # baseline_s / actual_s: for the same epochs, not the same accuracy
    final: bool  # actual_s is measured (the run has ended), not projected
    baseline_how: str
    actual_how: str
    baseline_epoch_s: float  # the baseline's projected seconds per epoch
    own_epoch_s: float  # this run's seconds per epoch: mean of finished ones, or timed
    steps_timed: int  # timed calibration steps per configuration
    epochs_budget: int
    epochs_run: int
    epochs_compared: int  # the baseline epochs baseline_s is for
    calibration_s: float  # what timing the steps cost; part of actual_s
    # (cause, seconds saved, how): frozen layers, fused optimizer, precision, early stop,
    # caching, compile (its gain less its cost), calibration (a cost), other (the
    # difference between the measured epochs and the timed steps).
    by_cause: tuple[tuple[str, float, str], ...]

    @property
    def breakdown(self) -> dict[str, float]:
        """Seconds saved by cause; they add up to saved_s."""
        return {cause: seconds for cause, seconds, _ in self.by_cause}

    def saved_at(self, epochs_done: float, elapsed_s: float) -> float:
        """Seconds saved so far: what the baseline would have taken for `epochs_done`."""
        return epochs_done * self.baseline_epoch_s - elapsed_s

    def projected_at(self, epochs_done: float, elapsed_s: float) -> float:
        """This run's projected wall time for the budget, from a point within the run:
        the time so far plus the epochs left at this run's pace (actual_s is the same
        sum, taken when the savings were derived). The live headline and the chart's
        projection both use it, so they agree at every point."""
        if self.final:
            return self.actual_s
        return elapsed_s + (self.epochs_budget - epochs_done) * self.own_epoch_s


@dataclass(frozen=True)
class SavingsUpdated:
    """The time saved against the baseline, derived by the publisher: after the
    calibration and after each epoch (projected), and once more, measured, just before
    RunEnded."""

    savings: Savings


Event = Union[RunStarted, Progress, EpochEnded, SavingsUpdated, RunEnded]
