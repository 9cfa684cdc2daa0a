"""Memory layout: channels-last for convnets where tensor cores use it, decided here and
applied here. cuDNN's autotuner (`torch.backends.cudnn.benchmark`) is left as the user set
it: on an H100 its search cost 19 s of a 22 s first epoch and saved nothing measurable per
epoch (docs/design.md, #17.11).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nbaccel.core.decision import Decision


def decide_channels_last(
    requested: Any, model: nn.Module, device: torch.device, precision: str
) -> Decision:
    """ "auto": convolutional backbones (most weights in 2-D convolutions) on CUDA GPUs whose
    tensor cores serve the run's precision: fp16/bf16 from compute capability 7.0 (V100,
    T4), fp32 through TF32 from 8.0 (Ampere). Without tensor cores (P100, or fp32 on a T4)
    cuDNN has no faster NHWC kernels and the layout conversions only cost. Not for
    transformers (their one convolution is the patch embedding), and not on a CPU, where
    resnet18 at 32 px measured no faster (93-109 against 91-114 ms a step)."""
    name = "channels_last"
    if requested is not True and requested != "auto":
        return Decision(name, False, "channels_last=False")
    if requested is True:
        return Decision(name, True, "channels_last=True")
    if device.type != "cuda":
        return Decision(name, False, f"auto: no gain measured on {device.type}")
    conv = sum(
        p.numel()
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
        for p in m.parameters(recurse=False)
    )
    share = conv / max(1, sum(p.numel() for p in model.parameters()))
    if share <= 0.5:
        return Decision(
            name, False, f"auto: not a convnet ({share:.0%} of weights in convolutions)"
        )
    major, minor = torch.cuda.get_device_capability(device)
    tf32 = major >= 8 and torch.backends.cudnn.allow_tf32
    if major < 7 or (precision == "fp32" and not tf32):
        return Decision(
            name,
            False,
            f"auto: no tensor cores for {precision} on compute capability "
            f"{major}.{minor}, where channels-last only adds conversions",
        )
    return Decision(
        name,
        True,
        f"auto: a convnet ({share:.0%} of weights in convolutions) on tensor cores",
    )


def place_model(
    model: nn.Module, device: torch.device, channels_last: bool
) -> nn.Module:
    """The model on the run's device, in the planned layout (in place)."""
    layout = torch.channels_last if channels_last else torch.preserve_format
    return model.to(device, memory_format=layout)


def restore_layout(model: nn.Module) -> nn.Module:
    """Back to the default layout, which saving and torch.export expect."""
    return model.to(memory_format=torch.contiguous_format)
