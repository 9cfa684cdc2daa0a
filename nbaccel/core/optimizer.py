"""AdamW over the layers that train (one rate for all unless asked otherwise), its fused
kernel where torch has one, and timm's warm-up + cosine schedule, stepped after every
optimizer step."""

from __future__ import annotations

import math

import torch
from timm.scheduler import CosineLRScheduler
from torch import nn

from nbaccel.core.decision import Decision

FINE_TUNE_LR = (
    1e-3  # "auto" when pretrained layers train: AdamW's usual fine-tuning rate
)
FRESH_LR = 3e-3  # "auto" when only new weights train: a random init, or the head alone
WEIGHT_DECAY = 0.01


def resolve_learning_rates(
    lr: object, pretrained: bool, backbone_trains: bool, devices: int = 1
) -> tuple[float, float]:
    """(head lr, backbone lr), the same rate for both (as BiT fine-tunes): a backbone at a
    tenth of the head's rate adapted too slowly under a domain shift (ImageNet weights on
    scanned digits: val_acc 0.21 after two epochs against 0.89). "auto" is 1e-3 when
    pretrained layers train, 3e-3 when every weight that trains is new (random weights, or
    the head alone on a frozen backbone), times the square root of `devices` (whose
    batches add up to one `devices` times larger: the square-root rule for Adam, Malladi
    et al. 2022); a number is used as given."""
    if lr != "auto":
        return float(lr), float(lr)  # type: ignore[arg-type]
    rate = FINE_TUNE_LR if pretrained and backbone_trains else FRESH_LR
    rate *= math.sqrt(devices)
    return rate, rate


def decide_fused(requested: object, device: torch.device) -> Decision:
    """AdamW's fused kernel: "auto" wherever torch has one for the device (CUDA, and CPU
    from torch 2.4). One kernel updates every parameter: on a CPU, resnet18's update took
    6 ms instead of 28-36 ms.

    Raises:
        ValueError: fused=True where torch has no fused AdamW.
    """
    if requested is not True and requested != "auto":
        return Decision("fused optimizer", False, "fused=False")
    probe = torch.zeros(1, device=device, requires_grad=True)
    try:
        torch.optim.AdamW([probe], fused=True)
    except (RuntimeError, TypeError, ValueError) as error:
        if requested is True:
            raise ValueError(
                f"fused=True, but {error}; use fused=False or 'auto'"
            ) from None
        return Decision(
            "fused optimizer",
            False,
            f"auto: torch has no fused AdamW for {device.type}",
        )
    why = (
        "fused=True"
        if requested is True
        else f"auto: one AdamW kernel on {device.type}"
    )
    return Decision("fused optimizer", True, why)


def create_optimizer(
    model: nn.Module, head_lr: float, backbone_lr: float, fused: bool = False
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters in up to four groups: head or backbone, with or
    without weight decay (biases and norm weights get none, as timm's
    param_groups_weight_decay). Every group starts at `head_lr` with an `lr_scale` (1 for
    the head, backbone_lr / head_lr for the backbone), which timm's schedulers apply, as
    they do for timm's own param_groups_layer_decay. `fused`: torch's single-kernel
    implementation (the same update, faster)."""
    head = {id(p) for p in model.get_classifier().parameters()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            no_decay = param.ndim <= 1 or name.endswith(".bias")
            groups.setdefault((id(param) in head, no_decay), []).append(param)
    param_groups = [
        {
            "params": params,
            "lr": head_lr,
            "lr_scale": 1.0 if is_head else backbone_lr / head_lr,
            "weight_decay": 0.0 if no_decay else WEIGHT_DECAY,
        }
        for (is_head, no_decay), params in groups.items()
    ]
    return torch.optim.AdamW(param_groups, fused=fused or None)


def create_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, head_lr: float
) -> CosineLRScheduler:
    """timm's cosine schedule over `total_steps` optimizer steps: a linear warm-up over the
    first 5% of them (at most 100), then cosine decay to 1% of each group's rate. Call
    `step_update(steps_done)` after every optimizer step."""
    warmup = min(100, max(1, total_steps // 20))
    return CosineLRScheduler(
        optimizer,
        t_initial=max(1, total_steps - warmup),
        lr_min=0.01 * head_lr,
        warmup_t=warmup,
        warmup_lr_init=head_lr / warmup,
        warmup_prefix=True,
        t_in_epochs=False,
    )
