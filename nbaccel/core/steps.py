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
) -> torch.Tensor:
    """One optimisation step on one batch; returns the loss, still on the device."""
    inputs = inputs.to(device, non_blocking=True)
    targets = targets.to(device, non_blocking=True)
    with autocast(device, precision):
        loss = F.cross_entropy(model(inputs), targets)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


@torch.no_grad()
def eval_step(
    model: nn.Module, inputs: torch.Tensor, device: torch.device, precision: str
) -> torch.Tensor:
    """The logits for one batch (the model in eval mode)."""
    with autocast(device, precision):
        return model(inputs.to(device, non_blocking=True))
