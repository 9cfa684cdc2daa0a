"""precision="auto": what it becomes before training (`plan_precision`), and on a CPU the
timing that settles it on the training thread (`decide_cpu_precision`): bf16 where this CPU
has bf16 instructions, a timed training step shows bf16 faster, and its losses agree with
fp32's; fp32 elsewhere.

On this project's 2-core AVX512-BF16 machine bf16 made EfficientNet-Lite0 at 96 px 1.3x
faster and resnet18 at 32 px about 1.15x slower (its small convolutions gain nothing), so the
choice is measured on the run's own model, batch and frozen layers, on the training thread,
and counted in the run's time.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import nn

from nbaccel.core.decision import Decision
from nbaccel.core.optimizer import create_optimizer
from nbaccel.core.plan import Plan
from nbaccel.core.precision import resolve_precision
from nbaccel.core.steps import Batch, trial_step
from nbaccel.core.timing import time_steps

PROBE_S = 0.0  # no time share: 1 untimed and 2 timed steps per precision
MIN_GAIN = 1.1  # bf16 must be this much faster: a 3-step timing varies by ~5%
LOSS_TOLERANCE = 0.05  # relative difference of the mean loss of the first two steps


def plan_precision(requested: str, device: torch.device) -> tuple[Decision, bool]:
    """(the precision before training, whether the training thread times bf16 against it):
    on a CPU, "auto" is fp32 until a timed step shows bf16 faster (below).

    Raises:
        ValueError: the device cannot train in the requested precision.
    """
    precision = resolve_precision(requested, device)
    if requested != "auto":
        return Decision(
            "precision", precision, f"precision={requested!r} as asked"
        ), False
    if device.type == "cpu" and not native_bf16():
        return Decision("precision", precision, "auto: no bf16 on this CPU"), False
    if device.type == "cpu":
        why = "auto: fp32, unless bf16 times faster on the training thread"
        return Decision("precision", precision, why), True
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        why = f"auto: compute capability {major}.{minor}"
        return Decision("precision", precision, why), False
    return Decision("precision", precision, f"auto on {device.type}"), False


def native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX512-BF16 or AMX), per /proc/cpuinfo."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", cpuinfo.read_text()) is not None


def decide_cpu_precision(
    plan: Plan, model: nn.Module, batch: Batch
) -> tuple[Decision, dict[str, float]]:
    """(the precision for a CPU run whose precision is "auto", the seconds per training step
    measured in each precision, for the calibration to reuse)."""
    if not native_bf16():
        return Decision(
            "precision", "fp32", "auto: no bf16 instructions on this CPU"
        ), {}
    seconds, losses = {}, {}
    for precision in ("fp32", "bf16"):
        step = trial_step(
            model,
            plan.device,
            precision,
            lambda trial: create_optimizer(
                trial, plan.head_lr, plan.backbone_lr, plan.fused.value
            ),
            plan.memory_format,
        )
        recorded: list[float] = []

        def record(batch: Batch, step=step, recorded=recorded) -> None:
            recorded.append(float(step(batch)))

        seconds[precision], _ = time_steps(
            record, [batch], plan.device, share_s=PROBE_S, warmup=1
        )
        # The first two steps start from (nearly) the same weights in both precisions;
        # later ones drift apart as each copy fits the batch its own way.
        losses[precision] = sum(recorded[:2]) / 2
    gain = seconds["fp32"] / seconds["bf16"]
    difference = abs(losses["bf16"] - losses["fp32"]) / max(losses["fp32"], 1e-6)
    timed = (
        f"a bf16 step took {seconds['bf16'] * 1e3:.0f} ms against "
        f"{seconds['fp32'] * 1e3:.0f} ms in fp32"
    )
    if not math.isfinite(difference) or difference > LOSS_TOLERANCE:
        why = f"auto: {timed}, but its loss differed by {difference:.0%}"
        return Decision("precision", "fp32", why), seconds
    if gain < MIN_GAIN:
        return Decision("precision", "fp32", f"auto: {timed}: no faster"), seconds
    why = f"auto: {timed} on this CPU, losses within {difference:.0%}"
    return Decision("precision", "bf16", why), seconds
