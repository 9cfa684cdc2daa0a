"""Compile and memory layout: decide "auto", and compile in the training thread with its cost
and its gain measured.

torch.compile is lazy: the first call of each graph compiles it. `warm_up_compiled` makes those
calls on purpose, before the first epoch, without changing the weights, so the compile time is
one measured figure in the run's time and in its savings.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import default_collate

from nbaccel.core.model import set_train_mode
from nbaccel.core.precision import autocast

COMPILE_MIN_STEPS = (
    1000  # "auto" compiles when the epoch budget has at least this many steps
)
TIMED_STEPS = 3


def resolve_compile(
    requested: Any, device: torch.device, total_steps: int, feature_cache: bool
) -> tuple[bool, str]:
    """(compile?, why)."""
    if requested is not True and requested != "auto":
        return False, "compile=False"
    if feature_cache:
        return (
            False,
            "features are cached: only the classifier runs, nothing to compile",
        )
    problem = _compile_problem()
    if requested is True:
        if problem:
            raise ValueError(
                f"compile=True, but {problem}; use compile=False or 'auto'"
            )
        return True, "compile=True"
    if problem:
        return False, problem
    if device.type != "cuda":
        return False, f"auto: on {device.type} compiling costs more than it saves"
    if total_steps < COMPILE_MIN_STEPS:
        return False, (
            f"auto: {total_steps} steps in the epoch budget, under the "
            f"{COMPILE_MIN_STEPS} that repay compiling (compile=True forces it)"
        )
    return True, f"auto: {total_steps} steps in the epoch budget repay compiling"


def _compile_problem() -> Optional[str]:
    try:
        from torch._dynamo.eval_frame import is_dynamo_supported

        return (
            None
            if is_dynamo_supported()
            else "torch.compile does not support this Python"
        )
    except ImportError:
        return "this torch has no torch.compile"


def resolve_channels_last(
    requested: Any, model: nn.Module, device: torch.device
) -> tuple[bool, str]:
    """(channels last?, why). "auto": convolutional backbones (most parameters in 2-D
    convolutions) on CUDA, where cuDNN's tensor-core kernels want that layout; not
    transformers, whose only convolution is the patch embedding, and not on a CPU, where it
    measured no faster (resnet18, 32 px: 93-109 against 91-114 ms a step)."""
    if requested is not True and requested != "auto":
        return False, "channels_last=False"
    if requested is True:
        return True, "channels_last=True"
    if device.type != "cuda":
        return False, f"auto: no gain measured on {device.type}"
    conv = sum(
        p.numel()
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
        for p in m.parameters(recurse=False)
    )
    share = conv / max(1, sum(p.numel() for p in model.parameters()))
    if share > 0.5:
        return True, f"auto: a convnet ({share:.0%} of weights in convolutions)"
    return False, f"auto: not a convnet ({share:.0%} of weights in convolutions)"


def warm_up_compiled(
    compiled: nn.Module, model: nn.Module, job: Any
) -> tuple[float, float]:
    """Compiles the training and evaluation graphs on the first batches and times a few
    steps each way. Gradients are dropped and BatchNorm statistics restored, so the weights
    are as before; the optimizer is not touched.

    Returns:
        (seconds spent compiling, seconds a compiled training step saves).
    """
    inputs, targets = _first_batch(job.train_loader)
    val_inputs, _ = _first_batch(job.val_loader)
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    started = _now(job.device)
    set_train_mode(model)
    _forward_backward(compiled, inputs, targets, job)
    model.eval()
    with torch.no_grad(), autocast(job.device, job.precision):
        compiled(val_inputs.to(job.device, memory_format=job.memory_format))
    compile_s = _now(job.device) - started
    set_train_mode(model)
    eager = _median_step(model, inputs, targets, job)
    fast = _median_step(compiled, inputs, targets, job)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
    model.zero_grad(set_to_none=True)
    return compile_s, max(0.0, eager - fast)


def _first_batch(loader: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The loader's first batch, read by index (its shuffle is left alone)."""
    dataset, size = loader.dataset, loader.batch_size
    return default_collate([dataset[i] for i in range(min(size, len(dataset)))])


def _forward_backward(
    module: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, job: Any
) -> None:
    inputs = inputs.to(job.device, non_blocking=True, memory_format=job.memory_format)
    with autocast(job.device, job.precision):
        loss = F.cross_entropy(module(inputs), targets.to(job.device))
    loss.backward()


def _median_step(
    module: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, job: Any
) -> float:
    times = []
    for _ in range(TIMED_STEPS):
        started = _now(job.device)
        _forward_backward(module, inputs, targets, job)
        times.append(_now(job.device) - started)
    return statistics.median(times)


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
