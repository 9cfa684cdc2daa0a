"""prepare_job: check every choice and build the model and loaders, on the caller's thread,
so that bad input raises from fasttrain() itself before any thread starts."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from nbaccel.core.config import TrainConfig
from nbaccel.core.data import resolve_sources
from nbaccel.core.loaders import create_loaders, create_transforms, resolve_batch_size
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
from nbaccel.core.optimizer import resolve_learning_rates
from nbaccel.core.precision import resolve_device, resolve_precision
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
    train_tf, eval_tf, data_config = create_transforms(
        model, config.image_size, config.augment
    )
    batch_size = resolve_batch_size(config.batch_size, device, len(train))
    train_loader, val_loader = create_loaders(
        train, val, (train_tf, eval_tf), batch_size, device, config.seed
    )
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
    )
