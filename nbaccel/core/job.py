"""prepare_job: check every choice and build the model and loaders, on the caller's thread,
so that bad input raises from fasttrain() itself before any thread starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import torch
from torch import nn
from torch.utils.data import DataLoader

from nbaccel.core.config import TrainConfig
from nbaccel.core.data import resolve_sources
from nbaccel.core.features import plan_feature_cache
from nbaccel.core.loaders import (
    TransformedImages,
    choose_workers,
    create_loaders,
    create_transforms,
    fits_image_cache,
    resolve_batch_size,
)
from nbaccel.core.model import (
    LayerGroup,
    apply_freeze,
    count_params,
    create_backbone,
    describe_weights,
    is_pretrained,
    list_layer_groups,
    resolve_freeze_depth,
)
from nbaccel.core.optimizer import resolve_fused, resolve_learning_rates
from nbaccel.core.precision import resolve_device, resolve_precision
from nbaccel.core.speedups import resolve_channels_last, resolve_compile
from nbaccel.core.stopping import StopRule


@dataclass(eq=False)
class TrainingJob:
    """Everything the training thread needs, resolved: no "auto" is left in it."""

    config: TrainConfig
    device: torch.device
    precision: str
    model: nn.Module  # on the CPU until the training thread moves it
    groups: list[LayerGroup]
    freeze_depth: int
    freeze_reason: str
    class_names: tuple[str, ...]
    train_loader: DataLoader
    val_loader: DataLoader
    batch_size: int
    head_lr: float
    backbone_lr: float
    stop_rule: StopRule
    data_config: dict  # timm's resolved input size, mean, std, interpolation, crop
    augment: str  # "light" | "flip" | "none"
    workers: int
    feature_cache: bool
    compile: bool
    fused: bool  # AdamW's fused kernel
    memory_format: torch.memory_format
    # (speed-up, used, why) for each choice, reported in RunStarted
    speedups: list[tuple[str, Union[bool, int], str]] = field(default_factory=list)
    micro_batches: int = 1  # >1 after an out-of-memory error (gradient accumulation)

    def use_batch_size(self, size: int) -> None:
        """Rebuilds the loaders for `size` images per step (batch_size="auto" on CUDA)."""
        self.batch_size = size
        self.train_loader, self.val_loader = create_loaders(
            self.train_loader.dataset,  # type: ignore[arg-type]
            self.val_loader.dataset,  # type: ignore[arg-type]
            size,
            self.device,
            self.workers,
            self.train_loader.generator,  # type: ignore[arg-type]
        )


def prepare_job(config: TrainConfig) -> TrainingJob:
    """Resolves `config` into a TrainingJob.

    Raises:
        ValueError: a choice that does not fit the data, the model or this machine.
    """
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    train, val = resolve_sources(config.data, config.val, config.seed)
    with torch.random.fork_rng(
        devices=[]
    ):  # a seeded head, without touching the user's RNG
        torch.manual_seed(config.seed)
        model = create_backbone(
            config.backbone, config.pretrained, len(train.class_names)
        )
    groups = list_layer_groups(model)
    images_per_class = len(train) / len(train.class_names)
    depth, reason = resolve_freeze_depth(
        config.freeze, groups, is_pretrained(config.pretrained), images_per_class
    )
    apply_freeze(model, groups, depth)
    frozen_all = depth == len(groups)
    augment = config.augment
    if augment == "auto":
        augment = "none" if frozen_all else "light"
    train_tf, eval_tf, data_config = create_transforms(
        model, config.image_size, augment
    )
    speedups: list[tuple[str, Union[bool, int], str]] = []
    feature_cache, why = plan_feature_cache(
        config.cache,
        model,
        frozen_all,
        augment,
        len(train) + len(val),
        data_config["input_size"],
        device,
    )
    if config.cache is True and not feature_cache and frozen_all:
        raise ValueError(f"cache=True, but the features cannot be cached: {why}")
    speedups.append(("feature cache", feature_cache, why))
    datasets = TransformedImages(train, train_tf), TransformedImages(val, eval_tf)
    if feature_cache:
        image_cache, why = False, "the features are cached instead"
    elif config.cache is False:
        image_cache, why = False, "cache=False"
    else:
        image_cache, why = fits_image_cache(datasets)
    if config.cache is True and not (image_cache or feature_cache):
        raise ValueError(f"cache=True, but nothing can be cached: {why}")
    speedups.append(("image cache", image_cache, why))
    datasets = tuple(
        TransformedImages(d.source, d.transform, image_cache) for d in datasets
    )
    workers, why = choose_workers(config.workers, datasets[0], device)
    speedups.append(("workers", workers, why))
    batch_size = resolve_batch_size(config.batch_size, device, len(train))
    generator = torch.Generator().manual_seed(config.seed)
    train_loader, val_loader = create_loaders(
        *datasets, batch_size, device, workers, generator
    )
    total_steps = config.epochs * len(train_loader)
    compiled, why = resolve_compile(config.compile, device, total_steps, feature_cache)
    speedups.append(("compile", compiled, why))
    channels_last, why = resolve_channels_last(config.channels_last, model, device)
    speedups.append(("channels_last", channels_last, why))
    fused, why = resolve_fused(config.fused, model, device)
    speedups.append(("fused optimizer", fused, why))
    head_lr, backbone_lr = resolve_learning_rates(
        config.lr, is_pretrained(config.pretrained)
    )
    return TrainingJob(
        config=config,
        device=device,
        precision=precision,
        model=model,
        groups=groups,
        freeze_depth=depth,
        freeze_reason=reason,
        class_names=train.class_names,
        train_loader=train_loader,
        val_loader=val_loader,
        batch_size=batch_size,
        head_lr=head_lr,
        backbone_lr=backbone_lr,
        stop_rule=config.stop_rule,
        data_config=data_config,
        augment=augment,
        workers=workers,
        feature_cache=feature_cache,
        compile=compiled,
        fused=fused,
        memory_format=torch.channels_last if channels_last else torch.preserve_format,
        speedups=speedups,
    )


def describe_start(job: TrainingJob) -> dict:
    """The RunStarted fields for `job`."""
    return dict(
        backbone=job.config.backbone,
        pretrained=describe_weights(job.config.pretrained),
        device=str(job.device),
        precision=job.precision,
        freeze_depth=job.freeze_depth,
        freeze_reason=job.freeze_reason,
        layer_groups=tuple(g.name for g in job.groups),
        trainable_params=count_params(job.model, trainable_only=True),
        total_params=count_params(job.model),
        class_names=job.class_names,
        train_images=len(job.train_loader.dataset),
        val_images=len(job.val_loader.dataset),  # type: ignore[arg-type]
        batch_size=job.batch_size,
        epochs=job.config.epochs,
        steps_per_epoch=len(job.train_loader),
        head_lr=job.head_lr,
        backbone_lr=job.backbone_lr,
        stop=job.stop_rule.text,
        image_size=int(job.data_config["input_size"][-1]),
        augment=job.augment,
        speedups=tuple(
            f"{name}: {_state(used)} ({why})" for name, used, why in job.speedups
        ),
    )


def _state(used: Union[bool, int]) -> str:
    return ("on" if used else "off") if isinstance(used, bool) else str(used)
