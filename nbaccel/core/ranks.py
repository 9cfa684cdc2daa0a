"""Ranks: the processes a run trains on, as the training loop sees them.

A run on one device is one rank, and every method here is then the identity: the loop
reads the same top to bottom either way. With `devices=N` (launch.py) each of the N
processes holds a `ProcessGroupRanks` over torch.distributed: the model is wrapped in
DistributedDataParallel (which averages the gradients), each rank trains on its shard of
every epoch, and the decisions that end an epoch or a run are taken once, by rank 0, and
followed by all, so that no rank waits forever in a collective the others left.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from nbaccel.core.decision import Decision
from nbaccel.core.openmp import cores


class Ranks:
    """One process: nothing to share, nothing to agree on."""

    rank = 0
    count = 1

    def agree(self, value: Any) -> Any:
        """Rank 0's `value`, on every rank (a stop, a stopping rule's verdict)."""
        return value

    def any(self, flag: bool) -> bool:
        """True on every rank if `flag` is true on any."""
        return flag

    def total(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over the ranks (sums of losses, correct answers, images)."""
        return tensor

    def wrap(self, model: nn.Module) -> nn.Module:
        """What a training step calls: the model, or its DDP wrapper."""
        return model

    def share_buffers(self, model: nn.Module) -> None:
        """Rank 0's BatchNorm statistics (and other float buffers) on every rank."""


class ProcessGroupRanks(Ranks):
    """This process's place in an initialised torch.distributed process group."""

    def __init__(self, rank: int, count: int, device: torch.device) -> None:
        import torch.distributed as dist

        self.rank, self.count, self.device = rank, count, device
        # Agreeing (every step) goes over gloo on the CPU: over NCCL each answer would
        # wait for the GPU's queue to drain, a sync per step.
        self._host = dist.new_group(backend="gloo") if device.type == "cuda" else None

    def agree(self, value: Any) -> Any:
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0, group=self._host)
        return box[0]

    def any(self, flag: bool) -> bool:
        import torch.distributed as dist

        votes = torch.tensor(float(flag))
        dist.all_reduce(votes, group=self._host)
        return bool(votes.item())

    def total(self, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        # gloo reduces CPU tensors, NCCL the rank's GPU's: the tensor travels as needed.
        summed = tensor.detach().to(self._wire).clone()
        dist.all_reduce(summed)
        return summed.to(tensor.device)

    def share_buffers(self, model: nn.Module) -> None:
        import torch.distributed as dist

        for buffer in model.buffers():
            if buffer.is_floating_point():
                dist.broadcast(buffer, src=0)

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        cuda = self.device.type == "cuda"
        return DistributedDataParallel(
            model, device_ids=[self.device.index] if cuda else None
        )

    @property
    def _wire(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


@contextlib.contextmanager
def every_core(wanted: bool) -> Iterator[None]:
    """While inside, torch's CPU ops use every core (a rank on a CPU has its share of
    them otherwise): rank 0 times the one-device baseline so, while the others wait."""
    if not wanted:
        yield
        return
    share = torch.get_num_threads()
    torch.set_num_threads(cores())
    try:
        yield
    finally:
        torch.set_num_threads(share)


def decide_devices(requested: Any, device: torch.device, asked_for: str) -> Decision:
    """How many data-parallel processes: 1 is the training thread; "all" is every CUDA
    GPU (the training thread where there is none). `asked_for`: the device option as
    given, to refuse a GPU index the processes would not use.

    Raises:
        ValueError: more processes than GPUs (or cores), or a device that is one only.
    """
    name = "devices"
    if requested == "all":
        if device.type != "cuda":
            return Decision(name, 1, f"all: no CUDA GPU here, so one {device.type}")
        requested = torch.cuda.device_count()
    count = int(requested)
    if count == 1:
        return Decision(name, 1, "one device: the training thread")
    if device.type == "mps":
        raise ValueError(
            f"devices={count}: mps is a single device; use devices=1 (or a CUDA machine)"
        )
    if not torch.distributed.is_available():
        raise ValueError(
            f"devices={count} needs torch.distributed, which this torch build lacks; "
            "use devices=1"
        )
    if device.type == "cuda":
        gpus = torch.cuda.device_count()
        if ":" in asked_for and not asked_for.endswith(":0"):
            raise ValueError(
                f"devices={count} trains on cuda:0..cuda:{count - 1}; device="
                f"{asked_for!r} picks one GPU: use device='cuda' (or devices=1)"
            )
        if count > gpus:
            raise ValueError(
                f"devices={count}, but this machine has {gpus} GPU(s): use "
                f"devices={gpus} or devices='all'"
            )
        why = f"{count} processes, one per GPU, DistributedDataParallel over NCCL"
        return Decision(name, count, why)
    available = cores()
    if count > available:
        raise ValueError(
            f"devices={count} on a CPU with {available} core"
            f"{'s' if available > 1 else ''}: each process needs one; use "
            f"devices={available}{' or fewer' if available > 1 else ''}"
        )
    why = (
        f"{count} processes sharing {available} cores ({available // count} "
        f"thread{'s' if available // count > 1 else ''} each), DistributedDataParallel "
        "over gloo"
    )
    return Decision(name, count, why)


def share_workers(workers: Decision, devices: int, auto: bool) -> Decision:
    """workers="auto" counts the machine's cores for one process: with `devices`
    processes each gets its share. A number asked for is each process's."""
    if devices == 1 or not auto or not workers.value:
        return workers
    each = max(1, workers.value // devices)
    return Decision(
        "workers", each, f"{workers.why}, shared by {devices} processes: {each} each"
    )
