"""Device and precision: resolve "auto", refuse what the hardware cannot do, and autocast."""

from __future__ import annotations

import contextlib

import torch

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(requested: str) -> torch.device:
    """Maps "auto" to cuda, then mps, then cpu; checks that an explicit device exists.

    Raises:
        ValueError: the device is unknown or not present on this machine.
    """
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ValueError(
            f"unknown device {requested!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                "device 'cuda' asked for, but this machine has no CUDA GPU; use device='auto' or 'cpu'"
            )
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {requested!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            "device 'mps' asked for, but Apple's MPS backend is not available; use 'auto' or 'cpu'"
        )
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(
            f"device type {device.type!r} is not supported; use 'auto', 'cpu', 'cuda' or 'mps'"
        )
    return device


def resolve_precision(requested: str, device: torch.device) -> str:
    """Maps "auto" to bf16 / fp16 / fp32 for `device`, and checks an explicit choice.

    On CUDA, bf16 needs compute capability 8.0 (Ampere) or newer. We read the capability
    rather than `torch.cuda.is_bf16_supported()`, which says True on a T4 (7.5) where bf16
    is emulated and slow. CPU: fp32 by default; bf16 is allowed (PyTorch's CPU autocast
    supports it) but fp16 is refused: it needs a CUDA GPU and a gradient scaler.

    Raises:
        ValueError: the device cannot train in the requested precision.
    """
    if device.type == "cuda":
        has_bf16 = torch.cuda.get_device_capability(device)[0] >= 8
        if requested == "auto":
            return "bf16" if has_bf16 else "fp16"
        if requested == "bf16" and not has_bf16:
            name = torch.cuda.get_device_name(device)
            raise ValueError(
                f"precision 'bf16' needs a GPU of compute capability 8.0 or newer; {name} is "
                f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))}. "
                "Use precision='fp16' (or 'auto') instead."
            )
        return requested
    if requested == "auto":
        return "fp32"
    if requested == "fp16":
        raise ValueError(
            f"precision 'fp16' needs a CUDA GPU; this run is on {device.type}. "
            "Use precision='fp32' (or 'auto'), or 'bf16' on a CPU."
        )
    if requested == "bf16" and device.type == "mps":
        raise ValueError(
            "precision 'bf16' is not supported on mps by nbaccel; use precision='fp32' (or 'auto')."
        )
    return requested


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for `precision` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def create_grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A gradient scaler that is active only for fp16, where small gradients underflow."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
