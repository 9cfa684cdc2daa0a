"""Calibration: time a few real steps of the baseline and of the run's own configuration.

The baseline is what a user writes by hand: every layer trained, fp32, no caching, no
compile. Its steps are timed on the run's own batches, on throwaway copies of the model
(the run's weights are not touched), after warm-up steps, with the device synchronised
around each timed step. The cost is capped and counted in the run's own time.
"""

from __future__ import annotations

import copy
import gc
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, default_collate

from nbaccel.core.features import pre_logits
from nbaccel.core.job import TrainingJob
from nbaccel.core.model import apply_freeze, set_train_mode
from nbaccel.core.optimizer import create_optimizer
from nbaccel.core.precision import autocast, create_grad_scaler
from nbaccel.core.steps import eval_step, train_step

WARMUP_STEPS = 3  # untimed steps per configuration
MAX_STEPS = 5  # timed steps per configuration...
MIN_STEPS = 2  # ...or fewer, down to this, once BUDGET_S is spent (slow models)
BUDGET_S = 4.0  # timed seconds for all configurations together
SETTLED_STEPS, SETTLED_SPREAD = 3, 1.1  # ...or fewer, once this many agree within 10%
LATER_WARMUP_STEPS = (
    1  # after the first configuration, the kernels and allocator are warm
)


@dataclass(frozen=True)
class Calibration:
    """Seconds per batch, measured. Train and val times are data (read, decode, transform)
    plus compute (forward, and for training backward and the optimizer step)."""

    train_data_s: float  # per training batch, read from the source
    val_data_s: float  # per validation batch, read from the source
    baseline_step_s: float  # compute: every layer trained, fp32
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


def calibrate(
    job: TrainingJob,
    stop_requested: Callable[[], bool] = lambda: False,
    budget_s: float = BUDGET_S,
) -> Optional[Calibration]:
    """Times the baseline's and the run's steps on `job`'s real batches.

    Returns None when a stop is asked for meanwhile. `job.model` must already be on the
    run's device; it is copied, never trained.
    """
    started = time.perf_counter()
    device, depth, precision = job.device, job.freeze_depth, job.precision
    train_batches, train_data_s, cached_train_s = _read_batches(
        job.train_loader, MAX_STEPS
    )
    val_batches, val_data_s, cached_val_s = _read_batches(job.val_loader, MAX_STEPS)
    # (frozen groups, precision, this run's speed-ups: fused AdamW, memory layout)
    configs = {
        "baseline": (0, "fp32", False),
        "frozen fp32": (depth, "fp32", True),
        "own": (depth, precision, True),
    }
    share = budget_s / (len(set(configs.values())) + len({"fp32", precision}))
    measured: dict[tuple[int, str, bool], tuple[float, int]] = {}
    for config in configs.values():
        if config not in measured:
            step = _training_step(job, *config)
            warmup = LATER_WARMUP_STEPS if measured else WARMUP_STEPS
            measured[config] = _time(step, train_batches, share, device, warmup)
            del step  # drops the copy and its optimizer before the next one
            _release(device)
            if stop_requested():
                return None
    evals = {
        p: _time(
            _evaluation_step(job, p), val_batches, share, device, LATER_WARMUP_STEPS
        )
        for p in dict.fromkeys(("fp32", precision))
    }
    _release(device)
    features = (
        _time_feature_steps(job, train_batches, val_batches, share)
        if job.feature_cache
        else {}
    )
    steps = min(n for _, n in [*measured.values(), *evals.values()])
    return Calibration(
        train_data_s=train_data_s,
        val_data_s=val_data_s,
        baseline_step_s=measured[configs["baseline"]][0],
        frozen_fp32_step_s=measured[configs["frozen fp32"]][0],
        own_step_s=measured[configs["own"]][0],
        fp32_eval_s=evals["fp32"][0],
        own_eval_s=evals[precision][0],
        steps_timed=steps,
        cost_s=time.perf_counter() - started,
        cached_train_data_s=cached_train_s,
        cached_val_data_s=cached_val_s,
        optimizer_gain_s=_time_fused_gain(job, train_batches[0]) if job.fused else 0.0,
        **features,
    )


def _training_step(
    job: TrainingJob, depth: int, precision: str, speedups: bool
) -> Callable[[tuple], torch.Tensor]:
    """One training step of a throwaway copy with `depth` groups frozen in `precision`;
    with this run's fused AdamW and memory layout, or (the baseline, a hand-written
    loop) without them."""
    model = copy.deepcopy(job.model)
    layout = job.memory_format if speedups else torch.contiguous_format
    model = model.to(memory_format=layout)
    apply_freeze(model, job.groups, depth)
    set_train_mode(model)
    optimizer = create_optimizer(
        model, job.head_lr, job.backbone_lr, speedups and job.fused
    )
    scaler = create_grad_scaler(job.device, precision)
    return lambda batch: train_step(
        model,
        optimizer,
        scaler,
        batch[0],
        batch[1],
        job.device,
        precision,
        memory_format=layout,
    )


def _evaluation_step(
    job: TrainingJob, precision: str
) -> Callable[[tuple], torch.Tensor]:
    """One validation batch through a throwaway copy in eval mode, in `precision`."""
    model = copy.deepcopy(job.model).eval()
    return lambda batch: eval_step(
        model, batch[0], job.device, precision, memory_format=job.memory_format
    )


def _time_feature_steps(
    job: TrainingJob, train_batches: list[tuple], val_batches: list[tuple], share: float
) -> dict[str, float]:
    """A training step and a validation batch of the classifier alone, on the features of
    the calibration's batches (what every epoch runs once the features are cached)."""
    model = copy.deepcopy(job.model)
    set_train_mode(model)
    train = [(pre_logits(model, x, job), y) for x, y in train_batches]
    model.eval()
    val = [(pre_logits(model, x, job), y) for x, y in val_batches]
    classifier = model.get_classifier()
    optimizer = create_optimizer(model, job.head_lr, job.backbone_lr, job.fused)
    scaler = create_grad_scaler(job.device, job.precision)
    step_s, _ = _time(
        lambda b: train_step(
            classifier, optimizer, scaler, b[0], b[1], job.device, job.precision
        ),
        train,
        share,
        job.device,
        LATER_WARMUP_STEPS,
    )
    eval_s, _ = _time(
        lambda b: eval_step(classifier, b[0], job.device, job.precision),
        val,
        share,
        job.device,
        LATER_WARMUP_STEPS,
    )
    return dict(feature_step_s=step_s, feature_eval_s=eval_s)


def _time_fused_gain(job: TrainingJob, batch: tuple) -> float:
    """Seconds the fused AdamW saves per step on the run's trainable parameters: the
    plain and the fused update timed on the same gradients (a copy's; its weights move)."""
    model = copy.deepcopy(job.model)
    set_train_mode(model)
    with autocast(job.device, job.precision):
        logits = model(batch[0].to(job.device, memory_format=job.memory_format))
    F.cross_entropy(logits.float(), batch[1].to(job.device)).backward()
    seconds = {}
    for fused in (False, True):
        optimizer = create_optimizer(model, job.head_lr, job.backbone_lr, fused)
        seconds[fused], _ = _time(
            lambda _, o=optimizer: o.step(), [None], 1.0, job.device
        )
    return max(0.0, seconds[False] - seconds[True])


def _read_batches(loader: DataLoader, count: int) -> tuple[list[tuple], float, float]:
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
            default_collate(
                [dataset[i] for i in range(b * size, min((b + 1) * size, total))]
            )
            for b in range(count)
        ]
        seconds.append((time.perf_counter() - started) / count)
    return batches, seconds[0], seconds[-1]


def _time(
    step: Callable[[tuple], object],
    batches: list[tuple],
    share_s: float,
    device: torch.device,
    warmup: int = WARMUP_STEPS,
) -> tuple[float, int]:
    """(median seconds per step, steps timed): `warmup` untimed steps (allocations,
    kernel selection: on a CPU the first three are up to 2.5x slower), then timed steps,
    each between device synchronisations, until MAX_STEPS or `share_s` seconds (at least
    MIN_STEPS), or once SETTLED_STEPS agree within SETTLED_SPREAD; cycling through
    `batches`."""
    for index in range(warmup):
        step(batches[index % len(batches)])
    times: list[float] = []
    while len(times) < MAX_STEPS and (len(times) < MIN_STEPS or sum(times) < share_s):
        if len(times) >= SETTLED_STEPS and max(times) <= min(times) * SETTLED_SPREAD:
            break
        batch = batches[(WARMUP_STEPS + len(times)) % len(batches)]
        _synchronize(device)
        started = time.perf_counter()
        step(batch)
        _synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times), len(times)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _release(device: torch.device) -> None:
    """Gives a copy's GPU memory back before the next copy. (On a CPU, `del` frees it;
    a gc pass there would cost ~0.2 s, a tenth of the whole calibration.)"""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
