"""Calibration: time a few real steps of the baseline and of the run's own configuration.

The baseline is what a user writes by hand: every layer trained, fp32, no caching, no
compile. Its steps are timed on the run's own batches, on throwaway copies of the model (the
run's weights are not touched), after warm-up steps, with the device synchronised around
each timed step. A batch that does not fit in GPU memory for a configuration (the baseline
trains every layer in fp32; the batch was probed for the run's own configuration) is timed
in halves, quarters, ... and scaled back to the whole batch, as a hand-written loop at that
smaller batch would take that many more steps. The cost is counted in the run's own time.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from nbaccel.core.averaging import WeightAverage
from nbaccel.core.events import Calibration
from nbaccel.core.features import pre_logits
from nbaccel.core.loaders import read_batch
from nbaccel.core.model import set_train_mode
from nbaccel.core.optimizer import create_optimizer
from nbaccel.core.plan import Plan
from nbaccel.core.precision import autocast
from nbaccel.core.steps import Batch, eval_step, trial_step
from nbaccel.core.timing import MAX_STEPS, MIN_STEPS, now, release, time_steps

BUDGET_S = 4.0  # timed seconds for all configurations together
WARMUP_STEPS = 3  # untimed steps for the first configuration...
LATER_WARMUP_STEPS = 1  # ...and for later ones: the kernels and allocator are warm
Step = Callable[[Batch], object]


def calibrate(
    plan: Plan,
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    stop_requested: Callable[[], bool] = lambda: False,
    timed: Optional[dict[str, float]] = None,
    budget_s: float = BUDGET_S,
) -> Optional[Calibration]:
    """Times the baseline's and the run's steps on the loaders' real batches.

    Returns None when a stop is asked for meanwhile. `model` is on the run's device; it is
    copied, never trained. `timed`: seconds per step of the run's own configuration in a
    precision, already measured on this batch (by the bf16 probe), not timed again.
    The BatchNorm re-estimation (bn_stats) is timed by the loop on its first real run.
    """
    started = time.perf_counter()
    device, depth, precision = plan.device, plan.freeze_depth, plan.precision
    train, train_data_s, cached_train_s = _read_batches(train_loader, MAX_STEPS)
    val, val_data_s, cached_val_s = _read_batches(val_loader, MAX_STEPS)
    # (frozen groups, precision, this run's speed-ups: fused AdamW, memory layout)
    configs = {
        "baseline": (0, "fp32", False),
        "frozen fp32": (depth, "fp32", True),
        "own": (depth, precision, True),
    }
    share = budget_s / (len(set(configs.values())) + len({"fp32", precision}))
    notes: list[str] = []
    measured: dict[tuple[int, str, bool], tuple[float, int]] = {
        (depth, p, True): (seconds, MIN_STEPS) for p, seconds in (timed or {}).items()
    }
    for name, config in configs.items():
        if config not in measured:
            warmup = LATER_WARMUP_STEPS if measured else WARMUP_STEPS
            step = _training_step(plan, model, *config)
            measured[config] = _time_fitting(
                step, train, share, plan, warmup, name, notes
            )
            del step  # the copy and its optimizer go before the next one is made
            release(device)
            if stop_requested():
                return None
    evals = {}
    for p in dict.fromkeys(("fp32", precision)):
        evals[p] = _time_evaluation(plan, model, p, val, share, notes)
        release(device)
    features = (
        _time_feature_steps(plan, model, train, val, share)
        if plan.feature_cache.value
        else {}
    )
    optimizer_gain_s = _time_fused_gain(plan, model, train[0], notes)
    ema_s = _time_weight_average(plan, model, len(train_loader)) if plan.ema else 0.0
    return Calibration(
        train_data_s=train_data_s,
        val_data_s=val_data_s,
        baseline_step_s=measured[configs["baseline"]][0],
        frozen_fp32_step_s=measured[configs["frozen fp32"]][0],
        own_step_s=measured[configs["own"]][0],
        fp32_eval_s=evals["fp32"][0],
        own_eval_s=evals[precision][0],
        steps_timed=min(n for _, n in [*measured.values(), *evals.values()]),
        cost_s=time.perf_counter() - started,
        cached_train_data_s=cached_train_s,
        cached_val_data_s=cached_val_s,
        optimizer_gain_s=optimizer_gain_s,
        ema_s=ema_s,
        notes=tuple(notes),
        **features,
    )


def _training_step(
    plan: Plan, model: nn.Module, depth: int, precision: str, speedups: bool
) -> Step:
    """A training step of a throwaway copy with `depth` groups frozen in `precision`; with
    this run's fused AdamW and memory layout, or (the baseline, a hand-written loop)
    without them."""
    fused = speedups and plan.fused.value
    return trial_step(
        model,
        plan.device,
        precision,
        lambda trial: create_optimizer(trial, plan.head_lr, plan.backbone_lr, fused),
        plan.memory_format if speedups else torch.contiguous_format,
        freeze=(list(plan.groups), depth),
    )


def _time_evaluation(
    plan: Plan,
    model: nn.Module,
    precision: str,
    batches: Sequence[Batch],
    share_s: float,
    notes: list[str],
) -> tuple[float, int]:
    """A validation batch through a throwaway copy in eval mode, in `precision`, timed
    (the copy goes when this returns; the caller then gives its memory back)."""
    copied = copy.deepcopy(model).eval()

    def evaluate(batch: Batch) -> object:
        return eval_step(
            copied, batch[0], plan.device, precision, memory_format=plan.memory_format
        )

    return _time_fitting(
        evaluate, batches, share_s, plan, LATER_WARMUP_STEPS, f"{precision} eval", notes
    )


def _time_fitting(
    step: Step,
    batches: Sequence[Batch],
    share_s: float,
    plan: Plan,
    warmup: int,
    what: str,
    notes: list[str],
) -> tuple[float, int]:
    """time_steps() on `batches`; when they do not fit in GPU memory, on halves of them
    (then quarters, ...), the time scaled back to a whole batch and the scaling noted."""
    pieces = 1
    while True:
        try:
            parts = [
                (x, y)
                for inputs, targets in batches
                for x, y in zip(inputs.chunk(pieces), targets.chunk(pieces))
            ]
            seconds, steps = time_steps(step, parts, plan.device, share_s, warmup)
            break
        except torch.cuda.OutOfMemoryError:
            if len(batches[0][1]) // pieces <= 1:
                raise
        release(plan.device)  # after the except block, which held the failed tensors
        pieces *= 2
    if pieces > 1:
        size = len(batches[0][1])
        notes.append(
            f"{what}: {size} images did not fit in GPU memory, so it was timed at "
            f"{-(-size // pieces)} images per step and scaled x{pieces}"
        )
    return seconds * pieces, steps


def _time_feature_steps(
    plan: Plan,
    model: nn.Module,
    train: list[Batch],
    val: list[Batch],
    share_s: float,
) -> dict[str, float]:
    """A training step and a validation batch of the classifier alone, on the features of
    the calibration's batches (what every epoch runs once the features are cached)."""
    copied = copy.deepcopy(model)
    args = (plan.device, plan.precision)
    set_train_mode(copied)
    train_features = [(pre_logits(copied, x, *args), y) for x, y in train]
    copied.eval()
    val_features = [(pre_logits(copied, x, *args), y) for x, y in val]
    step = trial_step(
        copied,
        *args,
        lambda trial: create_optimizer(
            trial, plan.head_lr, plan.backbone_lr, plan.fused.value
        ),
        part=lambda trial: trial.get_classifier(),
    )
    classifier = copied.get_classifier()
    step_s, _ = time_steps(
        step, train_features, plan.device, share_s, LATER_WARMUP_STEPS
    )
    eval_s, _ = time_steps(
        lambda batch: eval_step(classifier, batch[0], *args),
        val_features,
        plan.device,
        share_s,
        LATER_WARMUP_STEPS,
    )
    return dict(feature_step_s=step_s, feature_eval_s=eval_s)


def _time_fused_gain(
    plan: Plan, model: nn.Module, batch: Batch, notes: list[str]
) -> float:
    """Seconds the fused AdamW saves per step on the run's trainable parameters: the plain
    and the fused update timed on the same gradients (a copy's; its weights move). Out of
    memory, the gain is left out (0) and the other timings are kept."""
    if not plan.fused.value:
        return 0.0
    try:
        seconds = _optimizer_seconds(plan, model, batch)
    except torch.cuda.OutOfMemoryError:
        seconds = None
    release(plan.device)  # after the except block, which held the failed tensors
    if seconds is None:
        notes.append("fused optimizer: its gain was not timed (out of GPU memory)")
        return 0.0
    return max(0.0, seconds[False] - seconds[True])


def _optimizer_seconds(plan: Plan, model: nn.Module, batch: Batch) -> dict[bool, float]:
    """{fused: seconds per AdamW step} on a copy's gradients for `batch` (the copy and its
    optimizers go when this returns)."""
    copied = copy.deepcopy(model)
    set_train_mode(copied)
    inputs = batch[0].to(plan.device, memory_format=plan.memory_format)
    with autocast(plan.device, plan.precision):
        logits = copied(inputs)
    F.cross_entropy(logits.float(), batch[1].to(plan.device)).backward()
    seconds = {}
    for fused in (False, True):
        optimizer = create_optimizer(copied, plan.head_lr, plan.backbone_lr, fused)
        seconds[fused], _ = time_steps(  # 3 warm-up steps, then 2 timed: with 1,
            # the plain update's first timed steps were slow, its gain 50% too high
            lambda _, o=optimizer: o.step(),
            [None],
            plan.device,
            share_s=0.0,
        )
    return seconds


def _time_weight_average(plan: Plan, model: nn.Module, steps_per_epoch: int) -> float:
    """Seconds an epoch the weights' average costs: an update after every step and the
    two swaps around the evaluation (on a copy, gone before its memory is given back)."""
    seconds = _average_seconds(plan, copy.deepcopy(model), steps_per_epoch)
    release(plan.device)
    return seconds


def _average_seconds(plan: Plan, copied: nn.Module, steps_per_epoch: int) -> float:
    average = WeightAverage(
        create_optimizer(copied, plan.head_lr, plan.backbone_lr), decay=0.9
    )
    update_s, _ = time_steps(
        lambda _: average.update(), [None], plan.device, share_s=0.0, warmup=1
    )
    started = now(plan.device)
    average.swap()
    average.swap()
    return steps_per_epoch * update_s + now(plan.device) - started


def _read_batches(loader: DataLoader, count: int) -> tuple[list[Batch], float, float]:
    """Up to `count` batches of the loader's dataset, in order, and the seconds per batch
    to read, decode and transform them: from the source, then from the image cache (the
    first read fills it; the same figure again without one). Read by index so the
    loader's shuffle is untouched."""
    dataset, size = loader.dataset, loader.batch_size or 1
    total = len(dataset)  # type: ignore[arg-type]
    count = max(1, min(count, total // size))
    seconds = []
    for _ in range(2 if dataset.cache is not None else 1):  # type: ignore[attr-defined]
        started = time.perf_counter()
        batches = [
            read_batch(dataset, range(b * size, min((b + 1) * size, total)))
            for b in range(count)
        ]
        seconds.append((time.perf_counter() - started) / count)
    return batches, seconds[0], seconds[-1]
