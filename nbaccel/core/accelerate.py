"""The run's speed-ups, applied on the training thread before the first epoch: the batch size
probe, torch.compile, the frozen-feature cache. What each cost or saves is measured and goes
to the savings (`Acceleration`)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from nbaccel.core.features import FeatureCache
from nbaccel.core.job import TrainingJob
from nbaccel.core.memory import batch_size_limit, fits_in_memory, probe_batch_size
from nbaccel.core.savings import Acceleration
from nbaccel.core.speedups import warm_up_compiled


@dataclass
class Trainee:
    """What the epochs run: the module a step calls, and where its batches come from."""

    model: nn.Module  # the whole model (its train/eval mode is set on it)
    module: (
        nn.Module
    )  # what a step calls: the model, its compiled wrapper, or its classifier
    train_batches: Callable[[], Iterable]
    val_batches: Callable[[], Iterable]
    measured: Acceleration
    memory_format: torch.memory_format


def fit_batch_size(job: TrainingJob, model: nn.Module) -> None:
    """batch_size="auto" on CUDA: the largest batch that fits, probed on a copy of `model`."""
    if job.config.batch_size != "auto" or job.device.type != "cuda":
        why = (
            "as asked"
            if job.config.batch_size != "auto"
            else f"auto on {job.device.type}: no memory probe"
        )
        job.speedups.append(("batch size", job.batch_size, why))
        return
    limit = batch_size_limit(len(job.train_loader.dataset))  # type: ignore[arg-type]
    size, why = probe_batch_size(fits_in_memory(job, model), min(32, limit), limit)
    if size != job.batch_size:
        job.use_batch_size(size)
    job.speedups.append(("batch size", size, why))


def accelerate(
    job: TrainingJob, model: nn.Module, stop_requested: Callable[[], bool]
) -> Optional[Trainee]:
    """Compiles `model` and fills the feature cache, as `job` says. None if a stop came."""
    compile_s = compile_gain_s = 0.0
    module = model
    if job.compile:
        module = torch.compile(model)
        compile_s, compile_gain_s = warm_up_compiled(module, model, job)
    if not job.feature_cache:
        return Trainee(
            model,
            module,
            lambda: job.train_loader,
            lambda: job.val_loader,
            Acceleration(
                image_cache=job.train_loader.dataset.cache is not None,  # type: ignore[attr-defined]
                compile_s=compile_s,
                compile_gain_s=compile_gain_s,
            ),
            job.memory_format,
        )
    started = time.perf_counter()
    cache = FeatureCache.fill(model, job, stop_requested)
    if cache is None:
        return None
    if job.device.type == "cuda":
        torch.cuda.synchronize(job.device)
    return Trainee(
        model,
        model.get_classifier(),
        cache.train_batches,
        cache.val_batches,
        Acceleration(cache_fill_s=time.perf_counter() - started),
        torch.preserve_format,
    )
