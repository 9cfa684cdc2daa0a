"""Device and precision (#2): "auto" per device, and refusals that name the fix."""

import pytest
import torch

from nbaccel.core.precision import (
    autocast,
    create_grad_scaler,
    resolve_device,
    resolve_precision,
)

CPU = torch.device("cpu")


def test_cpu_auto_is_fp32_and_bf16_is_allowed():
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"
    with autocast(CPU, "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(CPU, "fp32"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_fp16_on_cpu_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="'fp16' needs a CUDA GPU.*precision='fp32'"):
        resolve_precision("fp16", CPU)


def test_scaler_is_active_only_for_fp16():
    assert not create_grad_scaler(CPU, "fp32").is_enabled()
    assert not create_grad_scaler(CPU, "bf16").is_enabled()


@pytest.mark.parametrize(
    ("capability", "auto", "bf16_ok"),
    [((7, 5), "fp16", False), ((8, 0), "bf16", True), ((9, 0), "bf16", True)],
)
def test_cuda_auto_reads_the_compute_capability(monkeypatch, capability, auto, bf16_ok):
    """A T4 (7.5) gets fp16 even though torch.cuda.is_bf16_supported() says True there."""
    monkeypatch.setattr(
        torch.cuda, "get_device_capability", lambda device=None: capability
    )
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cuda = torch.device("cuda", 0)
    assert resolve_precision("auto", cuda) == auto
    assert resolve_precision("fp16", cuda) == "fp16"
    if bf16_ok:
        assert resolve_precision("bf16", cuda) == "bf16"
    else:
        with pytest.raises(
            ValueError,
            match="needs a GPU of compute capability 8.0.*Tesla T4 is 7.5.*'fp16'",
        ):
            resolve_precision("bf16", cuda)


def test_devices():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU.*device='auto' or 'cpu'"):
            resolve_device("cuda:0")
