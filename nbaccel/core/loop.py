"""The training loop: one plain epoch loop, run on the training thread.

It talks to the world only through `emit(event)` and reads only the `Control` flags.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from nbaccel.core.calibration import Calibration, calibrate
from nbaccel.core.events import EpochEnded, Event, Progress, RunStarted, SavingsUpdated
from nbaccel.core.job import TrainingJob, describe_start
from nbaccel.core.model import best_state_copy, set_train_mode
from nbaccel.core.optimizer import create_optimizer, lr_factor, set_learning_rate
from nbaccel.core.precision import create_grad_scaler
from nbaccel.core.savings import estimate_savings
from nbaccel.core.steps import eval_step, train_step
from nbaccel.core.stopping import is_better

logger = logging.getLogger(__name__)

PROGRESS_EVERY = (
    10  # steps between Progress events: the only host syncs inside an epoch
)


class Control:
    """Stop and pause flags, set from any thread, read by the loop between steps.

    Time spent paused is not counted in `elapsed()`, so a time budget means training time.
    """

    def __init__(self) -> None:
        self.stop_requested = threading.Event()
        self._running = threading.Event()  # cleared while paused
        self._running.set()
        self._started = time.perf_counter()
        self._paused_s = 0.0

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self.stop_requested.set()
        self._running.set()  # wakes a paused loop so that it can end

    def start_clock(self) -> None:
        self._started, self._paused_s = time.perf_counter(), 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self._started - self._paused_s

    def should_stop(self) -> bool:
        """Called between steps: blocks while paused, then says whether to stop."""
        if not self._running.is_set():
            paused_at = time.perf_counter()
            self._running.wait()
            self._paused_s += time.perf_counter() - paused_at
        return self.stop_requested.is_set()


def run_training(
    job: TrainingJob, emit: Callable[[Event], None], control: Control
) -> tuple[str, str, Optional[int]]:
    """Trains `job.model` in place. Returns (status, reason, best epoch or None)."""
    # 1. Set up on this thread: seed, device, optimizer, scaler.
    seed_everything(job.config.seed)
    model = job.model.to(job.device)
    optimizer = create_optimizer(model, job.head_lr, job.backbone_lr)
    scaler = create_grad_scaler(job.device, job.precision)
    emit(RunStarted(**describe_start(job)))
    control.start_clock()
    history: list[dict] = []
    # 2. Time the baseline's steps and this run's on real batches (part of elapsed), then
    # seed again: the timing drew from the RNGs, and the run must not depend on it.
    calibration = measure_baseline(job, control)
    seed_everything(job.config.seed)

    def report_savings(end_reason: Optional[str] = None) -> None:
        if calibration is not None:
            emit(
                savings_update(job, calibration, history, control.elapsed(), end_reason)
            )

    report_savings()
    best_state, best_epoch, reason = None, None, "epochs"
    monitor = job.stop_rule.monitor
    for epoch in range(1, job.config.epochs + 1):
        # 3. Train one epoch; stop requests, the time budget and NaN are checked between steps.
        epoch_started = time.perf_counter()
        interrupted, train_loss, images_per_s = train_epoch(
            model, optimizer, scaler, job, epoch, emit, control
        )
        if interrupted:
            reason = interrupted
            break
        # 4. Evaluate on the held-out images.
        scores = evaluate(model, job, control)
        if scores is None:
            reason = "user"
            break
        val_loss, val_acc = scores
        if not math.isfinite(val_loss):
            reason = "nan"
            break
        # 5. Record the epoch; keep a host copy of the best weights so far.
        row = dict(
            epoch=epoch,
            train_loss=train_loss,
            val_loss=val_loss,
            val_acc=val_acc,
            images_per_s=images_per_s,
            epoch_s=time.perf_counter() - epoch_started,
            elapsed_s=control.elapsed(),
        )
        history.append(row)
        is_best = best_epoch is None or is_better(
            monitor, row[monitor], history[best_epoch - 1][monitor]
        )
        if is_best:
            best_state, best_epoch = best_state_copy(model), epoch
        emit(EpochEnded(**row, is_best=is_best))
        report_savings()
        # 6. Ask the stopping rules; the epoch budget ends the loop by itself.
        fired = job.stop_rule.check(history, control.elapsed())
        if fired:
            reason = fired
            break
    # 7. Report the measured savings; restore the best epoch's weights.
    report_savings(reason)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return ("stopped" if reason == "user" else "finished"), reason, best_epoch


def seed_everything(seed: int) -> None:
    """timm's random crops draw from Python's `random`, torchvision's from torch's."""
    random.seed(seed)
    torch.manual_seed(seed)


def measure_baseline(job: TrainingJob, control: Control) -> Optional[Calibration]:
    """The calibration, unless baseline="off", a stop came first, or the copies did not fit
    in memory (the run goes on without savings)."""
    if job.config.baseline == "off":
        return None
    try:
        return calibrate(job, control.stop_requested.is_set)
    except torch.cuda.OutOfMemoryError:
        logger.warning(
            "not enough GPU memory to time the baseline; savings not measured"
        )
        return None


def savings_update(
    job: TrainingJob,
    calibration: Calibration,
    history: list[dict],
    elapsed_s: float,
    end_reason: Optional[str],
) -> SavingsUpdated:
    return SavingsUpdated(
        estimate_savings(
            calibration,
            steps_per_epoch=len(job.train_loader),
            val_batches=len(job.val_loader),
            freeze_depth=job.freeze_depth,
            precision=job.precision,
            history=history,
            elapsed_s=elapsed_s,
            budget=job.config.epochs,
            end_reason=end_reason,
        )
    )


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    job: TrainingJob,
    epoch: int,
    emit: Callable[[Event], None],
    control: Control,
) -> tuple[Optional[str], float, float]:
    """One pass over the training data. Returns (interruption reason or None, mean loss, images/s)."""
    set_train_mode(model)
    steps = len(job.train_loader)
    first_step, total_steps = (epoch - 1) * steps, job.config.epochs * steps
    time_limit = job.stop_rule.time_limit_s
    loss_sum = torch.zeros(
        (), device=job.device
    )  # summed on the device: no sync per step
    images, mean_loss, started = 0, math.nan, time.perf_counter()
    for step, (inputs, targets) in enumerate(job.train_loader, start=1):
        if control.should_stop():
            return "user", mean_loss, 0.0
        if time_limit is not None and control.elapsed() >= time_limit:
            return "time", mean_loss, 0.0
        set_learning_rate(optimizer, lr_factor(first_step + step - 1, total_steps))
        loss_sum += train_step(
            model, optimizer, scaler, inputs, targets, job.device, job.precision
        )
        images += len(targets)
        if step % PROGRESS_EVERY == 0 or step == steps:
            mean_loss = (
                loss_sum.item() / step
            )  # the host sync, once per PROGRESS_EVERY steps
            if not math.isfinite(mean_loss):
                return "nan", mean_loss, 0.0
            speed = images / (time.perf_counter() - started)
            emit(Progress(epoch, step, steps, mean_loss, speed, control.elapsed()))
    return None, mean_loss, images / (time.perf_counter() - started)


@torch.no_grad()
def evaluate(
    model: nn.Module, job: TrainingJob, control: Control
) -> Optional[tuple[float, float]]:
    """(mean loss, accuracy) on the validation loader, or None if a stop was asked for."""
    model.eval()
    loss_sum = torch.zeros((), device=job.device)
    correct = torch.zeros((), device=job.device, dtype=torch.long)
    count = 0
    for inputs, targets in job.val_loader:
        if control.should_stop():
            return None
        logits = eval_step(model, inputs, job.device, job.precision)
        targets = targets.to(job.device, non_blocking=True)
        loss_sum += F.cross_entropy(logits.float(), targets, reduction="sum")
        correct += (logits.argmax(dim=1) == targets).sum()
        count += len(targets)
    return loss_sum.item() / count, correct.item() / count
