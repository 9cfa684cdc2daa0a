"""One training step and one evaluation step: shared by the loop and the calibration, so
what is timed is exactly what trains."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nbaccel.core.precision import autocast


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    device: torch.device,
    precision: str,
    micro_batches: int = 1,
    memory_format: torch.memory_format = torch.preserve_format,
) -> torch.Tensor:
    """One optimisation step on one batch; returns the loss, still on the device.

    With `micro_batches` > 1 the batch goes through the model in that many pieces whose
    gradients add up (gradient accumulation): the same step in less memory.
    """
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=device)
    for x, y in zip(inputs.chunk(micro_batches), targets.chunk(micro_batches)):
        x = x.to(device, non_blocking=True, memory_format=memory_format)
        y = y.to(device, non_blocking=True)
        with autocast(device, precision):
            loss = F.cross_entropy(model(x), y) * (len(y) / len(targets))
        scaler.scale(loss).backward()
        total += loss.detach()
    scaler.step(optimizer)
    scaler.update()
    return total


@torch.no_grad()
def eval_step(
    model: nn.Module,
    inputs: torch.Tensor,
    device: torch.device,
    precision: str,
    micro_batches: int = 1,
    memory_format: torch.memory_format = torch.preserve_format,
) -> torch.Tensor:
    """The logits for one batch (the model in eval mode), `micro_batches` pieces at a time."""
    logits = []
    for x in inputs.chunk(micro_batches):
        with autocast(device, precision):
            logits.append(
                model(x.to(device, non_blocking=True, memory_format=memory_format))
            )
    return torch.cat(logits)
