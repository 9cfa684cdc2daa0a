"""The training loop: one plain epoch loop, run on the training thread.

It talks to the world only through `emit(...)` and reads only the `Control` flags. It
trains and reports what it measured; the time saved is derived from those reports by the
publisher (savings.py), not here.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.utils.data import DataLoader

from nbaccel.core.auto_precision import decide_cpu_precision
from nbaccel.core.averaging import WeightAverage, ema_decay
from nbaccel.core.calibration import calibrate
from nbaccel.core.checkpoint import Checkpointer
from nbaccel.core.compiling import (
    compile_model,
    compile_seconds,
    compile_slot,
    decide_compile,
)
from nbaccel.core.control import Control
from nbaccel.core.decision import Decision
from nbaccel.core.events import (
    Acceleration,
    Calibration,
    EpochEnded,
    Measured,
    Progress,
    RunStarted,
)
from nbaccel.core.features import FeatureCache
from nbaccel.core.layout import place_model, restore_layout
from nbaccel.core.loaders import create_loaders, read_batch
from nbaccel.core.memory import MicroBatches, fit_batch_size
from nbaccel.core.model import (
    best_state_copy,
    count_params,
    recompute_batch_norm,
    set_train_mode,
    training_batch_norms,
)
from nbaccel.core.optimizer import create_optimizer, create_schedule
from nbaccel.core.plan import Plan
from nbaccel.core.precision import autocast, create_grad_scaler
from nbaccel.core.ranks import Ranks, every_core
from nbaccel.core.resume import Resumed
from nbaccel.core.steps import eval_step, forward_backward, optimizer_step
from nbaccel.core.stopping import is_better
from nbaccel.core.timing import now, release
from nbaccel.core.training_state import TrainingState

logger = logging.getLogger(__name__)

PROGRESS_EVERY = 10  # steps between Progress events: the only host syncs in an epoch
Emit = Callable[[Any], None]


@dataclass(frozen=True)
class Trainee:
    """What the epochs run on, once compiled or cached."""

    # What a step calls: the model, its compiled wrapper, or its classifier (on features);
    # with devices=N, in DistributedDataParallel's wrapper
    step_module: nn.Module
    eval_module: nn.Module  # the same, unwrapped: evaluating needs no other rank
    train_batches: Callable[[], Iterable]
    val_batches: Callable[[], Iterable]
    steps_per_epoch: int
    memory_format: torch.memory_format
    acceleration: Acceleration  # what compiling or caching cost and saves


def run_training(
    plan: Plan, emit: Emit, control: Control, checkpoints: Optional[Checkpointer] = None
) -> tuple[str, str, Optional[int]]:
    """Trains `plan.model` in place, saving a checkpoint after each epoch when given
    `checkpoints`, or goes on from `plan.resumed`. Returns (status, reason, best epoch or
    None)."""
    # 1. Set up on this thread: seed, the model on its device in its layout, the batch
    # size that fits, the loaders, and whether compiling pays at that batch size. A
    # resumed run's clock goes on from its checkpoint's.
    resumed: Optional[Resumed] = plan.resumed
    seed_everything(plan.seed)
    control.start_clock(resumed.meta["elapsed_s"] if resumed else 0.0)
    if checkpoints is not None:
        emit = checkpoints.record(emit)
    ranks = control.ranks  # one, or this process's place among devices=N (ranks.py)
    model = place_model(plan.model, plan.device, plan.channels_last.value)
    plan, timed = settle_on_device(plan, model, ranks)
    loaders = create_loaders(
        plan.train,
        plan.val,
        plan.batch_size.value,
        plan.device,
        plan.workers.value,
        torch.Generator().manual_seed(plan.seed),
        ranks.rank,
        ranks.count,
    )
    steps = plan.epochs * len(loaders[0])
    wanted = decide_compile(
        plan.compile, plan.device, steps, plan.feature_cache.value, ranks.count
    )
    strict = plan.compile is True
    with compile_slot(wanted, strict) as compiled:
        if resumed is None:
            emit(RunStarted(**describe_start(plan, compiled, *loaders, ranks.count)))
        else:  # its RunStarted and epochs so far were published again (Run.__init__)
            note = f"resumed after epoch {resumed.checkpoint.epoch} from {resumed.checkpoint.directory}"
            latest = [i for i in resumed.items if isinstance(i, Progress)]
            steps = len(loaders[0])
            last = latest[-1] if latest else Progress(1, 0, steps, math.nan, 0.0, 0.0)
            emit(replace(last, elapsed_s=control.elapsed(), note=note))
        # 2. Time the baseline's steps and this run's (a resumed run has them); compile;
        # cache the frozen features. All of it counts in elapsed. Then seed again: none
        # of it may change the run.
        norm_sample = batch_norm_sample(plan, model)
        calibration = (
            resumed.calibration
            if resumed
            else measure_baseline(plan, model, loaders, control, timed)
        )
        compiled_before = compile_seconds()
        trainee = None
        if not control.should_stop():
            trainee = prepare_trainee(plan, model, loaders, compiled, emit, control)
        if trainee is None:  # a stop came during the set-up
            restore_layout(model).eval()
            return "stopped", "user", None
        if calibration is not None and resumed is None:
            emit(Measured(calibration, trainee.acceleration, control.elapsed()))
        seed_everything(plan.seed + ranks.rank)  # each rank its own random crops
        optimizer = create_optimizer(
            model, plan.head_lr, plan.backbone_lr, plan.fused.value
        )
        schedule = create_schedule(optimizer, steps, plan.head_lr)
        scaler = create_grad_scaler(plan.device, plan.precision)
        # Ranks must run the same collectives: no rank may split its training batch
        # alone. Evaluating has none, so there a rank splits what does not fit.
        micro = MicroBatches(plan.batch_size.value, plan.device, ranks.count == 1)
        eval_micro = (
            micro if ranks.count == 1 else MicroBatches(micro.batch_size, plan.device)
        )
        average = (  # what each evaluation scores and the run keeps, when ema is on
            WeightAverage(optimizer, ema_decay(trainee.steps_per_epoch, steps))
            if plan.ema
            else None
        )
        state = TrainingState(
            model, optimizer, schedule, scaler, average, micro, loaders[0].generator
        )
        history: list[dict] = []
        best_state, best_epoch, reason = None, None, "epochs"
        if resumed is not None:  # every state and RNG as it was after its last epoch
            state.restore(resumed.tensors, resumed.meta)
            history, best_epoch = resumed.history, resumed.meta["best_epoch"]
            best_state = resumed.best
        for epoch in range(len(history) + 1, plan.epochs + 1):
            # 3. Train one epoch, then 4. evaluate on the held-out images. Stop
            # requests, the time budget and NaN are checked between steps.
            started = time.perf_counter()
            interrupted, last = train_epoch(
                model,
                trainee,
                optimizer,
                schedule,
                scaler,
                micro,
                average,
                plan,
                epoch,
                emit,
                control,
            )
            # After its last step each rank's BatchNorm statistics are its own batch's
            # (DDP shares rank 0's only before a forward): rank 0's for every rank.
            ranks.share_buffers(model)
            if average is not None:  # what is scored and kept: the weights' average
                average.swap()
            if not interrupted:
                interrupted, val_loss, val_acc, refreshed_s, recall = evaluate(
                    model, trainee, eval_micro, plan, control, emit, last, norm_sample
                )
            if interrupted:
                reason = interrupted
                break
            if epoch == 1 and calibration is not None and norm_sample:
                # The BatchNorm re-estimation, timed on its first run, for the savings.
                calibration = replace(calibration, bn_stats_s=refreshed_s)
                emit(Measured(calibration, trainee.acceleration, control.elapsed()))
            # 5. Record the epoch; keep a host copy of the best weights so far.
            row = dict(
                epoch=epoch,
                train_loss=last.train_loss,
                val_loss=val_loss,
                val_acc=val_acc,
                images_per_s=last.images_per_s,
                epoch_s=time.perf_counter() - started,
                elapsed_s=control.elapsed(),
            )
            history.append(row)
            monitor = plan.stop_rule.monitor
            is_best = best_epoch is None or is_better(
                monitor, row[monitor], history[best_epoch - 1][monitor]
            )
            if is_best:
                best_state, best_epoch = best_state_copy(model), epoch
            if average is not None:  # the trained weights back, to train on
                average.swap()
            emit(EpochEnded(**row, is_best=is_best, class_recall=recall))
            if checkpoints is not None:  # what is needed to go on from here
                new_best = best_state if is_best else None
                note = save_checkpoint(
                    checkpoints, state, history, best_epoch, new_best
                )
                if note:
                    emit(replace(last, elapsed_s=control.elapsed(), note=note))
            # 6. Ask the stopping rules (rank 0's verdict for all); the epoch budget ends
            # the loop by itself.
            fired = ranks.agree(plan.stop_rule.check(history, control.elapsed()))
            if fired:
                reason = fired
                break
        # 7. Report compiling that went on during training (a new micro-batch shape);
        # restore the best epoch's weights, in the default memory layout.
        recompiled = (
            compile_seconds() - compiled_before - trainee.acceleration.compile_s
        )
        if calibration is not None and compiled.value and recompiled > 0.01:
            acceleration = replace(
                trainee.acceleration,
                compile_s=trainee.acceleration.compile_s + recompiled,
            )
            emit(Measured(calibration, acceleration, control.elapsed()))
    if best_state is not None:
        model.load_state_dict(best_state)
    restore_layout(model).eval()
    return ("stopped" if reason == "user" else "finished"), reason, best_epoch


def save_checkpoint(
    checkpoints: Checkpointer,
    state: TrainingState,
    history: list[dict],
    best_epoch: Optional[int],
    new_best: Optional[dict],
) -> Optional[str]:
    """Writes the checkpoint after the epoch just ended. A failed write (a full disk)
    leaves the previous checkpoint as it was and becomes a note; training goes on."""
    epoch = len(history)
    tensors, plain = state.capture()
    extra = dict(
        history=history, best_epoch=best_epoch, elapsed_s=history[-1]["elapsed_s"]
    )
    try:
        checkpoints.save(epoch, tensors, new_best, dict(plain, **extra))
    except (OSError, RuntimeError) as error:  # torch.save's writer: RuntimeError
        logger.warning("checkpoint after epoch %d not written: %s", epoch, error)
        kept = checkpoints.meta.get("epoch")
        after = f"the one after epoch {kept} is kept" if kept else "none is kept yet"
        why = getattr(error, "strerror", None) or error
        return (
            f"checkpoint after epoch {epoch} not written ({why}); "
            f"{after}; training goes on"
        )
    return None


NORM_SAMPLE_IMAGES = 256  # training images that re-estimate BatchNorm before evaluating


def batch_norm_sample(plan: Plan, model: nn.Module) -> list[torch.Tensor]:
    """NORM_SAMPLE_IMAGES training images drawn at random once, in batches of about the
    run's size (at least 2 images each: BatchNorm cannot train on one), when bn_stats is on
    and the model has BatchNorm layers that train; else none. At random: a folder's first
    images are its first classes, whose statistics are not the data's. Drawn with a
    generator of their own, before the loop seeds the run again: the run's shuffle and
    augmentation are as without it."""
    total = len(plan.train)  # type: ignore[arg-type]
    if not plan.bn_stats or total < 2 or not training_batch_norms(model):
        return []
    drawn = torch.randperm(total, generator=torch.Generator().manual_seed(plan.seed))
    chosen = drawn[:NORM_SAMPLE_IMAGES]
    pieces = max(1, min(len(chosen) // 2, -(-len(chosen) // plan.batch_size.value)))
    return [
        read_batch(plan.train, part.tolist())[0] for part in chosen.tensor_split(pieces)
    ]


def seed_everything(seed: int) -> None:
    """timm's random crops draw from Python's `random`, torchvision's from torch's."""
    random.seed(seed)
    torch.manual_seed(seed)


def settle_on_device(
    plan: Plan, model: nn.Module, ranks: Ranks
) -> tuple[Plan, dict[str, float]]:
    """The plan completed with what only this device can tell, measured on this thread:
    the batch size that fits (a CUDA probe), whether bf16 pays (a CPU's "auto"); rank 0's
    findings on every rank. Returns it with the seconds per step the bf16 probe timed
    (the calibration reuses them)."""
    batch_size = ranks.agree(fit_batch_size(plan, model))
    plan = replace(plan, batch_size=batch_size, probe_batch=False)
    if not plan.probe_precision:
        return plan, {}
    size = min(plan.batch_size.value, len(plan.train))  # type: ignore[arg-type]
    first = read_batch(plan.train, range(size))
    precision, timed = decide_cpu_precision(plan, model, first)
    precision = ranks.agree(precision)
    return replace(plan, precision_choice=precision, probe_precision=False), timed


def describe_start(
    plan: Plan,
    compiled: Decision,
    train_loader: DataLoader,
    val_loader: DataLoader,
    devices: int,
) -> dict:
    """The RunStarted fields: the settled plan, and whether this thread compiles."""
    decisions = (
        plan.precision_choice,
        plan.feature_cache,
        plan.image_cache,
        plan.workers,
        compiled,
        plan.channels_last,
        plan.fused,
        plan.batch_size,
        plan.devices,
    )
    return dict(
        balance=plan.balance.line(),
        backbone=plan.backbone,
        pretrained=plan.weights,
        device=str(plan.device),
        precision=plan.precision,
        freeze_depth=plan.freeze_depth,
        freeze_reason=plan.freeze_reason,
        layer_groups=tuple(g.name for g in plan.groups),
        trainable_params=count_params(plan.model, trainable_only=True),
        total_params=count_params(plan.model),
        class_names=plan.class_names,
        train_images=len(plan.train),  # type: ignore[arg-type]
        val_images=len(plan.val),  # type: ignore[arg-type]
        batch_size=plan.batch_size.value,
        epochs=plan.epochs,
        steps_per_epoch=len(train_loader),
        head_lr=plan.head_lr,
        backbone_lr=plan.backbone_lr,
        stop=plan.stop_rule.text,
        image_size=int(plan.data_config["input_size"][-1]),
        augment=plan.augment,
        speedups=tuple(decision.line() for decision in decisions),
        val_batches=len(val_loader),
        head_init=plan.head_init,
        test_images=0 if plan.test is None else len(plan.test),  # type: ignore[arg-type]
        devices=devices,
    )


def measure_baseline(
    plan: Plan,
    model: nn.Module,
    loaders: tuple,
    control: Control,
    timed: dict[str, float],
) -> Optional[Calibration]:
    """The calibration, unless baseline="off", a stop came first, or not even one image
    fits in GPU memory for the baseline (the run goes on without savings). With
    devices=N, rank 0 times one device (on a CPU: with every core, which the other ranks
    leave idle meanwhile) and the others go on to wait for it in their first step."""
    if not plan.measure_baseline or control.ranks.rank != 0:
        return None
    if control.ranks.count > 1:  # the bf16 probe ran beside the other ranks: time alone
        timed = {}
    try:
        with every_core(control.ranks.count > 1 and plan.device.type == "cpu"):
            return calibrate(
                plan, model, *loaders, control.stop_requested.is_set, timed
            )
    except torch.cuda.OutOfMemoryError:
        pass
    release(plan.device)  # after the except block, which held the failed step
    logger.warning("not enough GPU memory to time the baseline; savings not measured")
    return None


def prepare_trainee(
    plan: Plan,
    model: nn.Module,
    loaders: tuple[DataLoader, DataLoader],
    compiled: Decision,
    emit: Emit,
    control: Control,
) -> Optional[Trainee]:
    """Compiles the model, or fills the feature cache, as decided. None if a stop came."""
    train_loader, val_loader = loaders
    steps = len(train_loader)
    if plan.feature_cache.value:
        started = time.perf_counter()
        cache = FeatureCache.fill(
            model,
            train_loader,
            val_loader,
            plan.device,
            plan.precision,
            control.stop_requested.is_set,
        )
        if cache is None:
            return None
        filled = Acceleration(cache_fill_s=now(plan.device) - started)
        classifier = model.get_classifier()
        return Trainee(
            classifier,
            classifier,
            cache.train_batches,
            cache.val_batches,
            steps,
            torch.preserve_format,
            filled,
        )
    module, compile_s, gain = model, 0.0, 0.0
    if compiled.value:
        strict = plan.compile is True
        module, compile_s, gain, note = compile_model(
            plan, model, train_loader, val_loader, strict
        )
        if note:
            emit(Progress(1, 0, steps, math.nan, 0.0, control.elapsed(), note=note))
    return Trainee(
        control.ranks.wrap(module),
        module,
        lambda: train_loader,
        lambda: val_loader,
        steps,
        plan.memory_format,
        Acceleration(
            image_cache=plan.image_cache.value,
            compile_s=compile_s,
            compile_gain_s=gain,
        ),
    )


def train_epoch(
    model: nn.Module,
    trainee: Trainee,
    optimizer: torch.optim.Optimizer,
    schedule: CosineLRScheduler,
    scaler: torch.amp.GradScaler,
    micro: MicroBatches,
    average: Optional[WeightAverage],
    plan: Plan,
    epoch: int,
    emit: Emit,
    control: Control,
) -> tuple[Optional[str], Progress]:
    """One pass over the training data. Returns (the interruption's reason or None, the
    epoch's last Progress: its mean loss and images/s)."""
    set_train_mode(model)
    steps = trainee.steps_per_epoch
    first_step = (epoch - 1) * steps
    time_limit = plan.stop_rule.time_limit_s
    loss_sum = torch.zeros((), device=plan.device)  # summed on the device: no sync
    images, started = 0, time.perf_counter()
    last = Progress(epoch, 0, steps, math.nan, 0.0, control.elapsed())

    def on_split(text: str) -> None:  # a change of course: the latest figures, a note
        emit(replace(last, elapsed_s=control.elapsed(), note=text))

    def clear_gradients() -> None:
        optimizer.zero_grad(set_to_none=True)

    ranks = control.ranks
    class_weights = (  # balance.py: each image's loss weighted by its class
        None
        if plan.class_weights is None
        else torch.tensor(plan.class_weights, device=plan.device)
    )
    for step, (inputs, targets) in enumerate(trainee.train_batches(), start=1):
        halt = control.should_stop(time_limit)  # "user", "time" or None, on every rank
        if halt:
            return halt, last
        gradients = partial(
            forward_backward,
            trainee.step_module,
            scaler,
            inputs,
            targets,
            plan.device,
            plan.precision,
            memory_format=trainee.memory_format,
            class_weights=class_weights,
        )
        # Out of memory, only the forward and backward are repeated, in pieces.
        loss_sum += micro.run(gradients, on_split, clear_gradients, len(targets))
        optimizer_step(optimizer, scaler)
        if average is not None:
            average.update()
        schedule.step_update(first_step + step)  # the rate for the next step
        images += len(targets) * ranks.count  # every rank's shard is as long
        if step % PROGRESS_EVERY == 0 or step == steps:
            # The host sync, once in a while: the mean over every rank's steps.
            mean_loss = ranks.total(loss_sum).item() / (step * ranks.count)
            if not math.isfinite(mean_loss):
                return "nan", last
            speed = images / (time.perf_counter() - started)
            last = Progress(epoch, step, steps, mean_loss, speed, control.elapsed())
            emit(last)
    return None, last


@torch.no_grad()
def evaluate(
    model: nn.Module,
    trainee: Trainee,
    micro: MicroBatches,
    plan: Plan,
    control: Control,
    emit: Emit,
    last: Progress,
    norm_sample: list[torch.Tensor],
) -> tuple[Optional[str], float, float, float, tuple[float, ...]]:
    """(interruption reason or None, mean loss, accuracy, seconds the BatchNorm
    re-estimation took, each class's recall: NaN for a class with no image) on the
    validation data: "user" when a stop was asked for, "nan" when the loss is not finite. `last` is the epoch's last Progress, repeated with a note
    if the validation batches must be split. The training BatchNorm layers' statistics
    are first re-estimated on `norm_sample`."""

    def on_split(text: str) -> None:
        emit(replace(last, elapsed_s=control.elapsed(), note=text))

    def forward(network: nn.Module, inputs: torch.Tensor) -> None:
        def pieces(count: int) -> None:
            for piece in inputs.chunk(count):
                with autocast(plan.device, plan.precision):
                    network(piece.to(plan.device, memory_format=trainee.memory_format))

        micro.run(pieces, on_split, size=len(inputs))  # out of memory: in pieces

    started = now(plan.device)
    recompute_batch_norm(model, norm_sample, forward)
    refreshed_s = now(plan.device) - started
    model.eval()
    loss_sum = torch.zeros((), device=plan.device)
    correct = torch.zeros((), device=plan.device, dtype=torch.long)
    count = torch.zeros((), device=plan.device, dtype=torch.long)
    classes = len(plan.class_names)
    seen = torch.zeros(classes, device=plan.device, dtype=torch.long)
    found = torch.zeros(classes, device=plan.device, dtype=torch.long)
    stopped = False
    for inputs, targets in trainee.val_batches():
        if control.stop_seen():  # ranks may see it a batch apart: they agree below
            stopped = True
            break
        logits = micro.run(
            partial(
                eval_step,
                trainee.eval_module,
                inputs,
                plan.device,
                plan.precision,
                memory_format=trainee.memory_format,
            ),
            on_split,
            size=len(inputs),
        )
        targets = targets.to(plan.device, non_blocking=True)
        loss_sum += F.cross_entropy(logits.float(), targets, reduction="sum")
        hits = logits.argmax(dim=1) == targets
        correct += hits.sum()
        count += len(targets)
        seen.index_add_(0, targets, torch.ones_like(targets))  # no host sync, unlike
        found.index_add_(0, targets, hits.long())  # bincount's on CUDA
    if control.ranks.any(stopped):
        return "user", math.nan, math.nan, refreshed_s, ()
    # Each rank scored its share of the images: the sums over all of them.
    loss_sum, correct, count, seen, found = (
        control.ranks.total(t) for t in (loss_sum, correct, count, seen, found)
    )
    loss, accuracy = loss_sum.item() / count.item(), correct.item() / count.item()
    recall = tuple(
        f / n if n else math.nan for f, n in zip(found.tolist(), seen.tolist())
    )
    finite = math.isfinite(loss)
    return (None if finite else "nan"), loss, accuracy, refreshed_s, recall
