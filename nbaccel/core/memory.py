"""GPU memory: batch_size="auto" (the largest batch that fits, probed on a copy), and going
on after an out-of-memory error by splitting each batch into micro-batches (gradient
accumulation), so the effective batch, and with it the learning dynamics, stay the same.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, TypeVar

import torch
from torch import nn

from nbaccel.core.decision import Decision
from nbaccel.core.optimizer import create_optimizer
from nbaccel.core.plan import Plan
from nbaccel.core.steps import trial_step
from nbaccel.core.timing import release, synchronize

MAX_AUTO_BATCH = (
    256  # larger batches rarely train better, and starve small data of steps
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
            "not even one image per step fits in GPU memory; use a smaller backbone or "
            "image_size"
        )
    while size * 2 <= limit and fits(size * 2):
        size *= 2
    reason = (
        "the limit for this dataset" if size == limit else f"{size * 2} did not fit"
    )
    return size, f"auto: the largest that fits in GPU memory, probed ({reason})"


def plan_batch_size(
    requested: object, device: torch.device, train_images: int
) -> tuple[Decision, bool]:
    """(the batch size before training, whether the training thread probes for a larger
    one): as asked; or "auto", which on CUDA probes from 32 up, and elsewhere is 32 (on a
    CPU memory is not the limit). Never above the training images."""
    if requested != "auto":
        size = max(1, min(int(requested), train_images))  # type: ignore[call-overload]
        return Decision("batch size", size, "as asked"), False
    size = max(1, min(32, train_images))
    if device.type == "cuda":
        return Decision("batch size", size, "auto: probed on the training thread"), True
    return Decision(
        "batch size", size, f"auto on {device.type}: no memory probe"
    ), False


def fit_batch_size(plan: Plan, model: nn.Module) -> Decision:
    """The batch size this run trains with: the planned one, or on CUDA with
    batch_size="auto" the largest that fits, probed on throwaway copies of `model`."""
    if not plan.probe_batch:
        return plan.batch_size
    limit = batch_size_limit(len(plan.train))  # type: ignore[arg-type]
    start = min(plan.batch_size.value, limit)
    size, why = probe_batch_size(lambda n: fits_in_memory(plan, model, n), start, limit)
    return Decision("batch size", size, why)


def fits_in_memory(plan: Plan, model: nn.Module, size: int) -> bool:
    """Whether one training step at `size` fits: a throwaway copy of `model` (AdamW state
    included) on random images of the run's input size, in its precision."""
    step = trial_step(
        model,
        plan.device,
        plan.precision,
        lambda trial: create_optimizer(
            trial, plan.head_lr, plan.backbone_lr, plan.fused.value
        ),
        plan.memory_format,
    )
    inputs = torch.randn(size, *plan.data_config["input_size"])
    targets = torch.randint(0, len(plan.class_names), (size,))
    try:
        step((inputs, targets))
        synchronize(plan.device)
        fits = True
    except torch.cuda.OutOfMemoryError:
        fits = False
    del step  # the copy and its optimizer, before the memory is given back
    release(plan.device)
    return fits


class MicroBatches:
    """How many pieces a batch goes through the model in: 1 until a batch runs out of GPU
    memory, then twice as many each time (the loop's state, not the plan's)."""

    def __init__(
        self, batch_size: int, device: torch.device, may_split: bool = True
    ) -> None:
        self.batch_size, self.device = batch_size, device
        self.may_split = may_split  # False: out of memory fails (devices=N: ranks.py)
        self.count = 1

    def run(
        self,
        attempt: Callable[[int], T],
        on_split: Callable[[str], None],
        reset: Callable[[], None] = lambda: None,
        size: Optional[int] = None,
    ) -> T:
        """`attempt(count)` on a batch of `size` images (the training batch size unless
        given); after an out-of-memory error, `reset()` (drop the partial gradients), free
        memory, double the count and try again, saying so through `on_split`. Only what
        `attempt` does is repeated: the optimizer step that follows a forward and
        backward is never part of it.

        Raises:
            torch.cuda.OutOfMemoryError: one image per piece does not fit either.
        """
        size = size or self.batch_size
        while True:
            try:
                return attempt(self.count)
            except torch.cuda.OutOfMemoryError:
                if math.ceil(size / self.count) <= 1 or not self.may_split:
                    raise
            # Here, after the except block: its traceback held the failed step's
            # tensors, which the memory release could not have given back.
            reset()
            release(self.device)
            images = math.ceil(size / self.count)
            self.count *= 2
            on_split(
                f"out of GPU memory with {images} images per step: now {self.count} "
                f"micro-batches of {math.ceil(size / self.count)}, gradients "
                f"accumulated (batch still {size})"
            )
