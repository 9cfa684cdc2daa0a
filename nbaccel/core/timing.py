"""Timing steps and giving memory back: the one device sync, the one median-of-steps timer
and the one memory release that the calibration, the compile warm-up and the batch-size
probe share."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Sequence
from typing import Any, Callable

import torch

WARMUP_STEPS = 3  # untimed steps first: on a CPU the first three are up to 2.5x slower
MAX_STEPS = 3  # timed steps at most (the median of 3 leaves one slow step out)...
MIN_STEPS = 2  # ...and at least, once the time share is spent (slow models)


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued work (CUDA runs asynchronously; a CPU does not)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    """The clock, once the device's queued work is done."""
    synchronize(device)
    return time.perf_counter()


def release(device: torch.device) -> None:
    """Gives cached GPU memory back to the driver (after a copy, a failure, a run). On a
    CPU `del` already frees memory, and a gc pass there costs ~0.2 s, so nothing is done.
    Call it outside an `except` block: a live traceback keeps the failed step's tensors."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def time_steps(
    step: Callable[[Any], object],
    batches: Sequence[Any],
    device: torch.device,
    share_s: float = 1.0,
    warmup: int = WARMUP_STEPS,
) -> tuple[float, int]:
    """(median seconds per step, steps timed): `warmup` untimed steps (allocations, kernel
    selection), then steps each timed between device synchronisations, until MAX_STEPS or
    `share_s` seconds (at least MIN_STEPS); cycling through `batches`."""
    for index in range(warmup):
        step(batches[index % len(batches)])
    times: list[float] = []
    while len(times) < MAX_STEPS and (len(times) < MIN_STEPS or sum(times) < share_s):
        batch = batches[(warmup + len(times)) % len(batches)]
        started = now(device)
        step(batch)
        times.append(now(device) - started)
    return statistics.median(times), len(times)
