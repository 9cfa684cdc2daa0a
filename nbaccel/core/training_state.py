"""What a run needs to go on exactly where it stopped, taken at an epoch boundary and put
back: weights, optimizer, schedule, gradient scaler, the weights' average, the shuffle's
generator and every RNG (Python, numpy, torch, CUDA).

Tensors go to the checkpoint's tensor file (`torch.save`, loaded with weights_only=True);
the Python and numpy RNG states are plain numbers for its JSON.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from timm.scheduler import CosineLRScheduler
from torch import nn


@dataclass
class TrainingState:
    """The loop's state objects, gathered to be saved or restored together."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: CosineLRScheduler
    scaler: torch.amp.GradScaler
    average: Optional[Any]  # averaging.WeightAverage (not imported: a shorter chain)
    micro: Any  # memory.MicroBatches: its count of pieces after running out of memory
    shuffle: torch.Generator  # the training loader's generator: each epoch's order

    def capture(self) -> tuple[dict, dict]:
        """(tensors, plain values) of the state now. Called with the trained weights in
        the model (not the average), between epochs."""
        tensors: dict[str, Any] = dict(
            model={k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            optimizer=self.optimizer.state_dict(),
            schedule=self.schedule.state_dict(),
            scaler=self.scaler.state_dict(),
            shuffle=self.shuffle.get_state(),
            torch_rng=torch.get_rng_state(),
            cuda_rng=torch.cuda.get_rng_state_all()
            if torch.cuda.is_initialized()
            else [],
            average=None,
        )
        if self.average is not None:
            tensors["average"] = dict(
                tensors=[t.detach().cpu() for t in self.average.average],
                updates=self.average.updates,
                decay=self.average.decay,
            )
        version, state, gauss = random.getstate()
        kind, keys, position, has_gauss, cached = np.random.get_state()
        plain = dict(
            python_rng=[version, list(state), gauss],
            numpy_rng=[kind, keys.tolist(), position, has_gauss, cached],
            micro_batches=self.micro.count,
        )
        return tensors, plain

    def restore(self, tensors: dict, plain: dict) -> None:
        """Puts a captured state back (the optimizer's on its parameters' device)."""
        self.model.load_state_dict(tensors["model"])
        self.optimizer.load_state_dict(tensors["optimizer"])
        self.schedule.load_state_dict(tensors["schedule"])
        self.scaler.load_state_dict(tensors["scaler"])
        self.shuffle.set_state(tensors["shuffle"])
        saved_average = tensors["average"]
        if (self.average is None) != (saved_average is None):
            raise ValueError("the checkpoint's ema setting differs from the run's")
        if self.average is not None:
            for mine, saved in zip(self.average.average, saved_average["tensors"]):
                mine.copy_(saved)
            self.average.updates = int(saved_average["updates"])
            self.average.decay = float(saved_average["decay"])
        torch.set_rng_state(tensors["torch_rng"])
        cuda = tensors["cuda_rng"]
        if (
            cuda
            and torch.cuda.is_available()
            and len(cuda) == torch.cuda.device_count()
        ):
            torch.cuda.set_rng_state_all(cuda)
        version, state, gauss = plain["python_rng"]
        random.setstate((version, tuple(state), gauss))
        kind, keys, position, has_gauss, cached = plain["numpy_rng"]
        np.random.set_state(
            (kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached)
        )
        self.micro.count = int(plain["micro_batches"])
