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
from torch.utils.data import DataLoader, default_collate

from nbaccel.core.job import TrainingJob
from nbaccel.core.model import apply_freeze, set_train_mode
from nbaccel.core.optimizer import create_optimizer
from nbaccel.core.precision import create_grad_scaler
from nbaccel.core.steps import eval_step, train_step

WARMUP_STEPS = 3  # untimed steps per configuration
MAX_STEPS = 5  # timed steps per configuration...
MIN_STEPS = 2  # ...or fewer, down to this, once BUDGET_S is spent (slow models)
BUDGET_S = 4.0  # timed seconds for all configurations together


@dataclass(frozen=True)
class Calibration:
    """Seconds per batch, measured. Train and val times are data (read, decode, transform)
    plus compute (forward, and for training backward and the optimizer step)."""

    train_data_s: float  # per training batch
    val_data_s: float  # per validation batch
    baseline_step_s: float  # compute: every layer trained, fp32
    frozen_fp32_step_s: float  # compute: the run's frozen layers, fp32
    own_step_s: float  # compute: the run's frozen layers and precision
    fp32_eval_s: float  # compute: a validation batch in fp32
    own_eval_s: float  # compute: a validation batch in the run's precision
    steps_timed: int  # timed steps per configuration (fewest of them)
    cost_s: float  # wall time the calibration took, warm-ups included


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
    train_batches, train_data_s = _read_batches(job.train_loader, MAX_STEPS)
    val_batches, val_data_s = _read_batches(job.val_loader, MAX_STEPS)
    configs = {"baseline": (0, "fp32")}
    configs["frozen fp32"] = (depth, "fp32") if depth else configs["baseline"]
    configs["own"] = (
        (depth, precision) if precision != "fp32" else configs["frozen fp32"]
    )
    share = budget_s / (len(set(configs.values())) + len({"fp32", precision}))
    measured: dict[tuple[int, str], tuple[float, int]] = {}
    for depth_, precision_ in configs.values():
        if (depth_, precision_) not in measured:
            step = _training_step(job, depth_, precision_)
            measured[(depth_, precision_)] = _time(step, train_batches, share, device)
            del step  # drops the copy and its optimizer before the next one
            _release(device)
            if stop_requested():
                return None
    evals = {
        p: _time(_evaluation_step(job, p), val_batches, share, device)
        for p in dict.fromkeys(("fp32", precision))
    }
    _release(device)
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
    )


def _training_step(
    job: TrainingJob, depth: int, precision: str
) -> Callable[[tuple], torch.Tensor]:
    """One training step of a throwaway copy with `depth` groups frozen in `precision`."""
    model = copy.deepcopy(job.model)
    apply_freeze(model, job.groups, depth)
    set_train_mode(model)
    optimizer = create_optimizer(model, job.head_lr, job.backbone_lr)
    scaler = create_grad_scaler(job.device, precision)
    return lambda batch: train_step(
        model, optimizer, scaler, batch[0], batch[1], job.device, precision
    )


def _evaluation_step(
    job: TrainingJob, precision: str
) -> Callable[[tuple], torch.Tensor]:
    """One validation batch through a throwaway copy in eval mode, in `precision`."""
    model = copy.deepcopy(job.model).eval()
    return lambda batch: eval_step(model, batch[0], job.device, precision)


def _read_batches(loader: DataLoader, count: int) -> tuple[list[tuple], float]:
    """Up to `count` batches of the loader's dataset, in order, and the seconds each took
    to read, decode and transform. Read by index so the loader's shuffle is untouched."""
    dataset, size = loader.dataset, loader.batch_size or 1
    total = len(dataset)  # type: ignore[arg-type]
    count = max(1, min(count, total // size))
    started = time.perf_counter()
    batches = [
        default_collate(
            [dataset[i] for i in range(b * size, min((b + 1) * size, total))]
        )
        for b in range(count)
    ]
    return batches, (time.perf_counter() - started) / count


def _time(
    step: Callable[[tuple], object],
    batches: list[tuple],
    share_s: float,
    device: torch.device,
) -> tuple[float, int]:
    """(median seconds per step, steps timed): WARMUP_STEPS untimed steps (allocations,
    kernel selection: on a CPU the first three are up to 2.5x slower), then timed steps,
    each between device synchronisations, until MAX_STEPS or `share_s` seconds (at least
    MIN_STEPS), cycling through `batches`."""
    for index in range(WARMUP_STEPS):
        step(batches[index % len(batches)])
    times: list[float] = []
    while len(times) < MAX_STEPS and (len(times) < MIN_STEPS or sum(times) < share_s):
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
