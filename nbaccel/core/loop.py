"""The training loop: one plain epoch loop, run on the training thread.

It talks to the world only through `emit(event)` and reads only the `Control` flags.
"""

from __future__ import annotations

import logging
import math
import random
import time
from functools import partial
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from nbaccel.core.accelerate import Trainee, accelerate, fit_batch_size
from nbaccel.core.calibration import Calibration, calibrate
from nbaccel.core.control import Control
from nbaccel.core.events import EpochEnded, Event, Progress, RunStarted, SavingsUpdated
from nbaccel.core.job import TrainingJob, describe_start
from nbaccel.core.memory import retry_smaller
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


def run_training(
    job: TrainingJob, emit: Callable[[Event], None], control: Control
) -> tuple[str, str, Optional[int]]:
    """Trains `job.model` in place. Returns (status, reason, best epoch or None)."""
    # 1. Set up on this thread: seed, device and memory layout, the batch size that fits.
    seed_everything(job.config.seed)
    control.start_clock()
    model = job.model.to(job.device, memory_format=job.memory_format)
    fit_batch_size(job, model)
    emit(RunStarted(**describe_start(job)))
    history: list[dict] = []
    # 2. Time the baseline's steps and this run's; compile; cache the frozen features. All
    # of it counts in elapsed. Then seed again: none of it may change the run.
    calibration = measure_baseline(job, control)
    trainee = accelerate(job, model, control.stop_requested.is_set)
    if trainee is None:
        return "stopped", "user", None
    seed_everything(job.config.seed)
    optimizer = create_optimizer(model, job.head_lr, job.backbone_lr, job.fused)
    scaler = create_grad_scaler(job.device, job.precision)

    def report_savings(end_reason: Optional[str] = None) -> None:
        if calibration is not None:
            emit(
                savings_update(job, calibration, trainee, history, control, end_reason)
            )

    report_savings()
    best_state, best_epoch, reason = None, None, "epochs"
    for epoch in range(1, job.config.epochs + 1):
        # 3. Train one epoch, then 4. evaluate on the held-out images. Stop requests, the
        # time budget and NaN are checked between steps.
        epoch_started = time.perf_counter()
        interrupted, train_loss, images_per_s = train_epoch(
            trainee, optimizer, scaler, job, epoch, emit, control
        )
        if not interrupted:
            interrupted, val_loss, val_acc = evaluate(trainee, job, control, emit)
        if interrupted:
            reason = interrupted
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
        monitor = job.stop_rule.monitor
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
    # 7. Report the measured savings; restore the best epoch's weights, in the default
    # memory layout (what saving and exporting expect).
    report_savings(reason)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.to(memory_format=torch.contiguous_format).eval()
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
    trainee: Trainee,
    history: list[dict],
    control: Control,
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
            elapsed_s=control.elapsed(),
            budget=job.config.epochs,
            end_reason=end_reason,
            acceleration=trainee.measured,
        )
    )


def train_epoch(
    trainee: Trainee,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    job: TrainingJob,
    epoch: int,
    emit: Callable[[Event], None],
    control: Control,
) -> tuple[Optional[str], float, float]:
    """One pass over the training data. Returns (interruption reason or None, mean loss, images/s)."""
    set_train_mode(trainee.model)
    steps = len(job.train_loader)
    first_step, total_steps = (epoch - 1) * steps, job.config.epochs * steps
    time_limit = job.stop_rule.time_limit_s
    # Summed on the device: no host sync per step.
    loss_sum = torch.zeros((), device=job.device)
    images, mean_loss, started = 0, math.nan, time.perf_counter()

    def note(text: str) -> None:
        emit(Progress(epoch, step, steps, mean_loss, 0.0, control.elapsed(), note=text))

    for step, (inputs, targets) in enumerate(trainee.train_batches(), start=1):
        if control.should_stop():
            return "user", mean_loss, 0.0
        if time_limit is not None and control.elapsed() >= time_limit:
            return "time", mean_loss, 0.0
        set_learning_rate(optimizer, lr_factor(first_step + step - 1, total_steps))
        loss_sum += retry_smaller(
            job,
            partial(
                train_step,
                trainee.module,
                optimizer,
                scaler,
                inputs,
                targets,
                job.device,
                job.precision,
                memory_format=trainee.memory_format,
            ),
            note,
        )
        images += len(targets)
        if step % PROGRESS_EVERY == 0 or step == steps:
            # The host sync, once per PROGRESS_EVERY steps.
            mean_loss = loss_sum.item() / step
            if not math.isfinite(mean_loss):
                return "nan", mean_loss, 0.0
            speed = images / (time.perf_counter() - started)
            emit(Progress(epoch, step, steps, mean_loss, speed, control.elapsed()))
    return None, mean_loss, images / (time.perf_counter() - started)


@torch.no_grad()
def evaluate(
    trainee: Trainee, job: TrainingJob, control: Control, emit: Callable[[Event], None]
) -> tuple[Optional[str], float, float]:
    """(interruption reason or None, mean loss, accuracy) on the validation data: "user"
    when a stop was asked for, "nan" when the loss is not finite."""
    trainee.model.eval()
    loss_sum = torch.zeros((), device=job.device)
    correct = torch.zeros((), device=job.device, dtype=torch.long)
    count = 0

    def note(text: str) -> None:
        emit(Progress(0, 0, 0, math.nan, 0.0, control.elapsed(), note=text))

    for inputs, targets in trainee.val_batches():
        if control.should_stop():
            return "user", math.nan, math.nan
        logits = retry_smaller(
            job,
            partial(
                eval_step,
                trainee.module,
                inputs,
                job.device,
                job.precision,
                memory_format=trainee.memory_format,
            ),
            note,
        )
        targets = targets.to(job.device, non_blocking=True)
        loss_sum += F.cross_entropy(logits.float(), targets, reduction="sum")
        correct += (logits.argmax(dim=1) == targets).sum()
        count += len(targets)
    loss, accuracy = loss_sum.item() / count, correct.item() / count
    return (None if math.isfinite(loss) else "nan"), loss, accuracy
