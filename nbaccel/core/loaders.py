"""Loaders: timm's transforms for the backbone, the batch size, and the DataLoaders.

Transforms come from timm's own data config for the model, so the pixels a model sees match
what its weights were trained on.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from timm.data import create_transform, resolve_model_data_config
from torch.utils.data import DataLoader, Dataset

from nbaccel.core.data import ImageSource


class TransformedImages(Dataset):
    """An ImageSource with a transform: yields (tensor C x H x W, label)."""

    def __init__(self, source: ImageSource, transform: Any) -> None:
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.source.load(index)), int(self.source.labels[index])


def create_transforms(
    model: torch.nn.Module, image_size: Optional[int], augment: str
) -> tuple[Any, Any, dict]:
    """timm's train and eval transforms for `model`, at `image_size` when given.

    Returns:
        (train transform, eval transform, the resolved data config).
    """
    config = resolve_model_data_config(model)
    if image_size is not None:
        config["input_size"] = (3, image_size, image_size)
    common = dict(
        input_size=config["input_size"],
        interpolation=config["interpolation"],
        mean=config["mean"],
        std=config["std"],
    )
    eval_transform = create_transform(
        **common, crop_pct=config["crop_pct"], is_training=False
    )
    if augment == "none":
        return eval_transform, eval_transform, config
    train_transform = create_transform(
        **common,
        is_training=True,
        scale=(0.8, 1.0),
        hflip=0.5 if augment == "flip" else 0.0,
        color_jitter=None,
    )
    return train_transform, eval_transform, config


def resolve_batch_size(requested: Any, device: torch.device, train_size: int) -> int:
    """Images per step: "auto" is 64 on a GPU and 32 on a CPU; never above the data."""
    size = (
        (64 if device.type != "cpu" else 32) if requested == "auto" else int(requested)
    )
    return max(1, min(size, train_size))


def create_loaders(
    train: ImageSource,
    val: ImageSource,
    transforms: tuple[Any, Any],
    batch_size: int,
    device: torch.device,
    seed: int,
) -> tuple[DataLoader, DataLoader]:
    """Shuffled train and ordered val loaders. Data loads in the training thread (0 workers):
    worker processes forked from a threaded kernel can deadlock."""
    generator = torch.Generator().manual_seed(seed)
    pin = device.type == "cuda"
    train_loader = DataLoader(
        TransformedImages(train, transforms[0]),
        batch_size=batch_size,
        shuffle=True,
        generator=generator,
        # No batch of one: BatchNorm cannot train on it.
        drop_last=len(train) > batch_size,
        pin_memory=pin,
    )
    val_loader = DataLoader(
        TransformedImages(val, transforms[1]), batch_size=batch_size * 2, pin_memory=pin
    )
    return train_loader, val_loader
