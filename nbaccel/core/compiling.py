"""torch.compile: whether it applies (and why not), and compiling on the training thread with
its cost and its gain measured.

torch.compile is lazy: the first call of each input shape compiles a graph. `compile_model`
makes those calls on purpose before the first epoch, for every shape the epochs will use
(the training batch, the validation batch and the last, smaller validation batch), so the
compile time is one measured figure in the run's time and savings. A shape that only comes
later (a micro-batch after running out of memory) compiles during training: `compile_seconds`
measures that too, and the savings count it when the run ends.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader

from nbaccel.core.decision import Decision
from nbaccel.core.loaders import read_batch
from nbaccel.core.model import set_train_mode
from nbaccel.core.plan import Plan
from nbaccel.core.precision import autocast, create_grad_scaler
from nbaccel.core.steps import forward_backward
from nbaccel.core.timing import now, time_steps

COMPILE_MIN_STEPS = 1000  # "auto" compiles when the epoch budget has this many steps
MIN_CAPABILITY = (7, 0)  # Triton, torch.compile's GPU backend, refuses older GPUs
# torch.compile does not support two threads compiling at once: one run at a time does.
_ONE_AT_A_TIME = threading.Lock()


def compile_problem(device: torch.device) -> Optional[str]:
    """Why torch.compile cannot run here (this Python, a GPU without Triton), or None."""
    try:
        from torch._dynamo.eval_frame import is_dynamo_supported
    except ImportError:
        return "this torch has no torch.compile"
    if not is_dynamo_supported():
        return "torch.compile does not support this Python"
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        if capability < MIN_CAPABILITY:
            name = torch.cuda.get_device_name(device)
            return (
                f"{name} has compute capability {capability[0]}.{capability[1]}, and "
                "Triton (torch.compile's GPU backend) needs 7.0 or newer"
            )
        from torch.utils._triton import has_triton

        if not has_triton():
            return (
                "Triton (torch.compile's GPU backend) is not installed with this torch"
            )
    return None


def check_compile(requested: Any, device: torch.device) -> None:
    """Refuses compile=True where it cannot run, before any thread starts.

    Raises:
        ValueError: naming the reason and the fix.
    """
    if requested is not True:
        return
    problem = compile_problem(device) or (
        "another run in this process is compiling, and torch.compile cannot compile "
        "two at once"
        if _ONE_AT_A_TIME.locked()
        else None
    )
    if problem:
        raise ValueError(f"compile=True, but {problem}; use compile=False or 'auto'")


def decide_compile(
    requested: Any,
    device: torch.device,
    total_steps: int,
    feature_cache: bool,
    devices: int = 1,
) -> Decision:
    """Whether to compile, once the batch size (and so the steps of the epoch budget) is
    known: "auto" compiles on CUDA when `total_steps` repay a compile of tens of seconds.
    Not with devices=N (prepare refuses compile=True there)."""
    if requested is not True and requested != "auto":
        return Decision("compile", False, "compile=False")
    if devices > 1:
        why = f"devices={devices}: the processes train uncompiled (not wired yet)"
        return Decision("compile", False, why)
    if feature_cache:
        why = "features are cached: only the classifier runs, nothing to compile"
        return Decision("compile", False, why)
    if requested is True:
        return Decision("compile", True, "compile=True")
    problem = compile_problem(device)
    if problem:
        return Decision("compile", False, f"auto: {problem}")
    if device.type != "cuda":
        why = f"auto: on {device.type} compiling costs more than it saves"
        return Decision("compile", False, why)
    if total_steps < COMPILE_MIN_STEPS:
        why = (
            f"auto: {total_steps} steps in the epoch budget, under the "
            f"{COMPILE_MIN_STEPS} that repay compiling (compile=True forces it)"
        )
        return Decision("compile", False, why)
    why = f"auto: {total_steps} steps in the epoch budget repay compiling"
    return Decision("compile", True, why)


@contextlib.contextmanager
def compile_slot(decision: Decision, strict: bool) -> Iterator[Decision]:
    """Holds the process's one compiling slot while a compiling run trains. "auto" that
    finds it taken trains eagerly; compile=True (`strict`; checked free when planned)
    fails."""
    if not decision.value:
        yield decision
        return
    if not _ONE_AT_A_TIME.acquire(blocking=False):
        why = "another run in this process is compiling, and torch.compile cannot compile two at once"
        if strict:
            raise RuntimeError(f"compile=True, but {why}; use compile=False or 'auto'")
        yield Decision("compile", False, f"auto: {why}")
        return
    try:
        yield decision
    finally:
        _ONE_AT_A_TIME.release()


def compile_seconds() -> float:
    """Seconds this process has spent compiling graphs so far (dynamo's own record)."""
    try:
        from torch._dynamo.utils import compilation_time_metrics
    except ImportError:
        return 0.0
    return sum(compilation_time_metrics.get("_compile.compile_inner", []))


def compile_model(
    plan: Plan,
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    strict: bool,
) -> tuple[nn.Module, float, float, str]:
    """torch.compile(model), warmed up on every batch shape the epochs will use, and three
    eager and three compiled steps timed. Gradients are dropped and BatchNorm statistics
    restored, so the weights are as before; no optimizer is involved.

    With `strict` False ("auto"), a compile that fails (an unsupported GPU or model) falls
    back to the eager model and says why; compile=True lets the error end the run.

    Returns:
        (the module the steps call, seconds spent compiling, seconds a compiled step saves,
        a note: "" when compiled, else why not).
    """
    inputs, targets = _batch(train_loader, 0)
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    scaler = create_grad_scaler(plan.device, plan.precision)
    args = (plan.device, plan.precision, 1, plan.memory_format)

    def train(module: nn.Module) -> object:
        return forward_backward(module, scaler, inputs, targets, *args)

    started = now(plan.device)
    try:
        # Inside the try: torch.compile() itself can raise (on the H100's torch 2.11 its
        # inductor import warned, and the tests' warnings are errors), and "auto" must
        # fall back to the eager model then too.
        compiled = torch.compile(model)
        set_train_mode(model)
        train(compiled)
        model.eval()
        for index in _val_shapes(val_loader):
            with torch.no_grad(), autocast(plan.device, plan.precision):
                val_inputs = _batch(val_loader, index)[0]
                compiled(val_inputs.to(plan.device, memory_format=plan.memory_format))
        compile_s = now(plan.device) - started
        set_train_mode(model)
        eager, _ = time_steps(lambda _: train(model), [None], plan.device, warmup=0)
        fast, _ = time_steps(lambda _: train(compiled), [None], plan.device, warmup=0)
        gain, module, note = max(0.0, eager - fast), compiled, ""
    except Exception as error:  # noqa: BLE001 - torch.compile raises many kinds
        if strict:
            raise
        compile_s, gain, module = now(plan.device) - started, 0.0, model
        note = f"compiling failed, so the run trains eagerly ({type(error).__name__}: {error})"
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
    model.zero_grad(set_to_none=True)
    return module, compile_s, gain, note


def _batch(loader: DataLoader, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The loader's batch number `index` in dataset order (its shuffle is left alone)."""
    dataset, size = loader.dataset, loader.batch_size or 1
    end = min((index + 1) * size, len(dataset))  # type: ignore[arg-type]
    return read_batch(dataset, range(index * size, end))


def _val_shapes(loader: DataLoader) -> list[int]:
    """The validation batches whose shapes differ: the first, and a smaller last one."""
    count, size = len(loader.dataset), loader.batch_size or 1  # type: ignore[arg-type]
    last = (count - 1) // size
    return [0, last] if count % size and last else [0]
