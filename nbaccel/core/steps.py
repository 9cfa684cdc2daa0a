"""One training step and one evaluation step, shared by the loop, the calibration, the
compile warm-up and the batch-size probe, so that what is timed is exactly what trains.

A training step is two halves: `forward_backward` (which the loop may repeat in smaller
micro-batches after running out of memory) and `optimizer_step` (which runs once).
"""

from __future__ import annotations

import copy
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from nbaccel.core.model import LayerGroup, apply_freeze, set_train_mode
from nbaccel.core.precision import autocast, create_grad_scaler

Batch = tuple[torch.Tensor, torch.Tensor]


def forward_backward(
    model: nn.Module,
    scaler: torch.amp.GradScaler,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    device: torch.device,
    precision: str,
    micro_batches: int = 1,
    memory_format: torch.memory_format = torch.preserve_format,
    class_weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Adds one batch's gradients to the parameters' `.grad`; returns its mean loss, still
    on the device. With `micro_batches` > 1 the batch goes through the model in that many
    pieces whose gradients add up (gradient accumulation): the same gradients in less
    memory. `class_weights` (on the device) weight each image's loss by its class
    (balance.py); the mean is still over the batch's images."""
    total = torch.zeros((), device=device)
    for x, y in zip(inputs.chunk(micro_batches), targets.chunk(micro_batches)):
        x = x.to(device, non_blocking=True, memory_format=memory_format)
        y = y.to(device, non_blocking=True)
        with autocast(device, precision):
            losses = F.cross_entropy(model(x), y, reduction="none")
            if class_weights is not None:
                losses = losses * class_weights[y]
            loss = losses.sum() / len(targets)
        scaler.scale(loss).backward()
        total += loss.detach()
    return total


def optimizer_step(
    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler
) -> None:
    """Applies the accumulated gradients (unscaled first for fp16) and clears them."""
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    device: torch.device,
    precision: str,
    memory_format: torch.memory_format = torch.preserve_format,
) -> torch.Tensor:
    """One optimisation step on one batch; returns the loss, still on the device."""
    loss = forward_backward(
        model, scaler, inputs, targets, device, precision, 1, memory_format
    )
    optimizer_step(optimizer, scaler)
    return loss


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


def trial_step(
    model: nn.Module,
    device: torch.device,
    precision: str,
    create_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    memory_format: torch.memory_format = torch.preserve_format,
    freeze: Optional[tuple[list[LayerGroup], int]] = None,
    part: Optional[Callable[[nn.Module], nn.Module]] = None,
) -> Callable[[Batch], torch.Tensor]:
    """One training step of a throwaway copy of `model` (its weights are never touched),
    for timing or probing: the copy in `memory_format`, with `freeze` = (groups, depth)
    applied when given, in training mode, with its own optimizer and grad scaler. `part`
    picks what the step calls (e.g. the classifier alone, on cached features)."""
    trial = copy.deepcopy(model).to(memory_format=memory_format)
    if freeze is not None:
        apply_freeze(trial, *freeze)
    set_train_mode(trial)
    optimizer = create_optimizer(trial)
    scaler = create_grad_scaler(device, precision)
    module = trial if part is None else part(trial)
    return lambda batch: train_step(
        module, optimizer, scaler, batch[0], batch[1], device, precision, memory_format
    )
