"""GPU memory: batch_size="auto" (the largest batch that fits, probed), and going on after an
out-of-memory error by splitting each batch into micro-batches (gradient accumulation), so the
effective batch, and with it the learning dynamics, stay the same.
"""

from __future__ import annotations

import copy
import gc
import math
from typing import Any, Callable, TypeVar

import torch
from torch import nn

from nbaccel.core.model import set_train_mode
from nbaccel.core.optimizer import create_optimizer
from nbaccel.core.precision import create_grad_scaler
from nbaccel.core.steps import train_step

MAX_AUTO_BATCH = (
    256  # larger batches rarely train better, and starve small datasets of steps
)
MIN_STEPS_PER_EPOCH = 8  # "auto" keeps at least this many steps in an epoch
T = TypeVar("T")


def batch_size_limit(train_images: int) -> int:
    """The largest power of two "auto" may pick: <= MAX_AUTO_BATCH, and small enough to
    leave MIN_STEPS_PER_EPOCH steps per epoch."""
    ceiling = max(1, min(MAX_AUTO_BATCH, train_images // MIN_STEPS_PER_EPOCH))
    return 2 ** int(math.log2(ceiling))


def probe_batch_size(
    fits: Callable[[int], bool], start: int, limit: int
) -> tuple[int, str]:
    """(the largest batch size that fits, why): doubles from `start` up to `limit` while
    `fits(size)`, or halves from `start` until it does.

    Raises:
        MemoryError: not even a batch of one fits.
    """
    size = min(start, limit)
    if not fits(size):
        while size > 1:
            size //= 2
            if fits(size):
                return size, f"auto: {size * 2} images did not fit in GPU memory"
        raise MemoryError(
            "not even one image per step fits in GPU memory; use a smaller backbone or image_size"
        )
    while size * 2 <= limit and fits(size * 2):
        size *= 2
    reason = (
        "the limit for this dataset" if size == limit else f"{size * 2} did not fit"
    )
    return size, f"auto: the largest that fits in GPU memory, probed ({reason})"


def fits_in_memory(job: Any, model: nn.Module) -> Callable[[int], bool]:
    """`fits(size)`: one training step at `size` of a throwaway copy of `model` on random
    images of the run's input size, in its precision; False on out-of-memory."""

    def fits(size: int) -> bool:
        trial = copy.deepcopy(model)
        set_train_mode(trial)
        optimizer = create_optimizer(trial, job.head_lr, job.backbone_lr, job.fused)
        scaler = create_grad_scaler(job.device, job.precision)
        inputs = torch.randn(size, *job.data_config["input_size"])
        targets = torch.randint(0, len(job.class_names), (size,))
        try:
            train_step(
                trial,
                optimizer,
                scaler,
                inputs,
                targets,
                job.device,
                job.precision,
                memory_format=job.memory_format,
            )
            if job.device.type == "cuda":
                torch.cuda.synchronize(job.device)
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            del trial, optimizer
            release(job.device)

    return fits


def retry_smaller(job: Any, step: Callable[..., T], note: Callable[[str], None]) -> T:
    """`step(micro_batches=job.micro_batches)`; after an out-of-memory error, frees memory, doubles `job.micro_batches`
    (halving the images per forward pass) and tries again, saying so through `note`.

    Raises:
        torch.cuda.OutOfMemoryError: one image per forward pass does not fit either.
    """
    while True:
        try:
            return step(micro_batches=job.micro_batches)
        except torch.cuda.OutOfMemoryError:
            images = math.ceil(job.batch_size / job.micro_batches)
            if images <= 1:
                raise
            release(job.device)
            job.micro_batches *= 2
            smaller = math.ceil(job.batch_size / job.micro_batches)
            note(
                f"out of GPU memory with {images} images per step: now {job.micro_batches} "
                f"micro-batches of {smaller}, gradients accumulated (batch still {job.batch_size})"
            )


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
